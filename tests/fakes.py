"""A small fake plugin used by the core tests: components of several kinds with simple signatures."""

from modulm import hookimpl, nested


def toy_ffn(width: int = 4, act: str = "relu", *, d_model, d_ff=None):
    """A toy ffn."""
    return ("ffn", width, act, d_model)


def toy_model(d_model: int = 8, scale: float = 1.0, ffn: nested("ffn") = "toy-ffn", tags: list[str] = (), *, vocab_size):
    """A toy model.

    d_model: width of the model
    """
    return {"d_model": d_model, "scale": scale, "ffn": ffn(d_model=d_model), "vocab_size": vocab_size}


def toy_data(path: str, vocab_size: int = 10, *, seed=0, cache_dir=None):
    """A toy data source."""
    return ("data", path, vocab_size)


def toy_logger(prefix: str = "", *, run_dir=None):
    """A toy logger."""
    return ("logger", prefix)


def toy_optimizer(lr: float = 1e-3, *, params):
    """A toy optimizer."""
    return ("opt", lr)


def toy_schedule(warmup: int = 0, *, base_lr, max_iterations):
    """A toy schedule."""
    return lambda it: base_lr


class ToyPlugin:
    @hookimpl
    def modulm_register_components(self, registry):
        registry.ffn("toy-ffn", toy_ffn)
        registry.model("toy", toy_model)
        registry.data("toy-data", toy_data)
        registry.logger("console", toy_logger)
        registry.logger("file", toy_logger)
        registry.logger("jsonl", toy_logger)
        registry.optimizer("adamw", toy_optimizer)
        registry.schedule("cosine-warmup", toy_schedule)


def toy_registry():
    from modulm import plugins

    pm = plugins.load(autoload=False, env={})
    pm.register(ToyPlugin(), "toy")
    return pm.registry
