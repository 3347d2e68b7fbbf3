"""modulm built-in plugin: optim components (being built)."""

from modulm import hookimpl


@hookimpl
def modulm_register_components(registry):
    pass
