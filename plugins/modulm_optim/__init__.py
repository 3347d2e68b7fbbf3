"""modulm built-in plugin ``optim``: optimizers (adamw, muon, sgd) and learning-rate schedules
(cosine-warmup, constant, wsd). The loss and gradient clipping live in :mod:`modulm.functional`.

The names below are imported on first use, so loading the plugin does not import torch.
"""

from modulm import hookimpl
from modulm.lazy import lazy_attributes

_HOMES = {
    "SGD": "modulm_optim.sgd",
    "AdamW": "modulm_optim.adamw",
    "Muon": "modulm_optim.muon",
    "Constant": "modulm_optim.schedules",
    "CosineWarmup": "modulm_optim.schedules",
    "WarmupStableDecay": "modulm_optim.schedules",
    "get_lr_cosine_schedule": "modulm_optim.schedules",
}
__all__ = list(_HOMES)
__getattr__ = lazy_attributes(__name__, _HOMES)


@hookimpl
def modulm_register_components(registry):
    registry.optimizer("adamw", "modulm_optim.adamw:adamw")
    registry.optimizer("muon", "modulm_optim.muon:muon")
    registry.optimizer("sgd", "modulm_optim.sgd:sgd")
    registry.schedule("cosine-warmup", "modulm_optim.schedules:cosine_warmup")
    registry.schedule("constant", "modulm_optim.schedules:constant")
    registry.schedule("wsd", "modulm_optim.schedules:wsd")
