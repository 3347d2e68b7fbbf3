"""modulm built-in plugin ``optim``: optimizers (adamw, muon, sgd) and learning-rate schedules
(cosine-warmup, constant, wsd). The loss and gradient clipping live in :mod:`modulm.functional`."""

from modulm import hookimpl

from .adamw import AdamW, adamw
from .muon import Muon, muon
from .schedules import Constant, CosineWarmup, WarmupStableDecay, constant, cosine_warmup, get_lr_cosine_schedule, wsd
from .sgd import SGD, sgd

__all__ = [
    "SGD",
    "AdamW",
    "Muon",
    "Constant",
    "CosineWarmup",
    "WarmupStableDecay",
    "get_lr_cosine_schedule",
]


@hookimpl
def modulm_register_components(registry):
    registry.optimizer("adamw", adamw)
    registry.optimizer("muon", muon)
    registry.optimizer("sgd", sgd)
    registry.schedule("cosine-warmup", cosine_warmup)
    registry.schedule("constant", constant)
    registry.schedule("wsd", wsd)
