"""modulm built-in plugin: data sources and batch sampling.

* ``memmap``: token files (``.npy`` or raw ``.bin``) memory-mapped and sampled uniformly.
* ``text``: raw text files tokenized once into cached token files, then served like ``memmap``.
* :func:`get_batch`: the sampler both use, usable on any 1-D token array.
"""

from modulm import hookimpl
from modulm_data.batching import get_batch
from modulm_data.memmap import MemmapSource, TokenSource
from modulm_data.text import TextSource

__all__ = ["MemmapSource", "TextSource", "TokenSource", "get_batch"]


@hookimpl
def modulm_register_components(registry):
    registry.data("memmap", MemmapSource)
    registry.data("text", TextSource)
