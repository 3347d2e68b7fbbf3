"""modulm built-in plugin: data sources and batch sampling.

* ``memmap``: token files (``.npy`` or raw ``.bin``) memory-mapped and sampled uniformly.
* ``text``: raw text files tokenized once into cached token files, then served like ``memmap``.
* :func:`get_batch`: the sampler both use, usable on any 1-D token array.

The names are imported on first use, so the dataset utilities (``modulm data prepare`` and
friends, which need numpy but not torch) start without importing torch.
"""

from importlib import import_module

from modulm import hookimpl

_HOMES = {"get_batch": "batching", "MemmapSource": "memmap", "TokenSource": "memmap", "TextSource": "text"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)


@hookimpl
def modulm_register_components(registry):
    from modulm_data.memmap import MemmapSource
    from modulm_data.text import TextSource

    registry.data("memmap", MemmapSource)
    registry.data("text", TextSource)
