"""modulm built-in plugin: data sources and batch sampling.

* ``memmap``: token files (``.npy`` or raw ``.bin``) memory-mapped and sampled uniformly.
* ``text``: raw text files tokenized once into cached token files, then served like ``memmap``.
* :func:`get_batch`: the sampler both use, usable on any 1-D token array.

The names are imported on first use, so the dataset utilities (``modulm data prepare`` and
friends, which need numpy but not torch) start without importing torch.
"""

from modulm import hookimpl
from modulm.lazy import lazy_attributes

_HOMES = {"get_batch": "modulm_data.batching", "MemmapSource": "modulm_data.memmap",
          "TokenSource": "modulm_data.memmap", "TextSource": "modulm_data.text"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_attributes(__name__, _HOMES)


@hookimpl
def modulm_register_components(registry):
    registry.data("memmap", "modulm_data.memmap:MemmapSource")
    registry.data("text", "modulm_data.text:TextSource")


@hookimpl
def modulm_add_commands(subparsers, registry):
    from modulm_data.cli import add_data_command

    add_data_command(subparsers, registry)
