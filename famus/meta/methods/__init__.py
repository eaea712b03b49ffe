"""Meta-learning methods, by name: ``mwnet``, ``l2r``, ``mlc`` (each module registers itself on import)."""

from famus.meta.methods import l2r as _l2r  # noqa: F401  (registers)
from famus.meta.methods import mlc as _mlc  # noqa: F401  (registers)
from famus.meta.methods import mwnet as _mwnet  # noqa: F401  (registers)
from famus.meta.methods.base import (
    METHODS,
    MetaMethod,
    PerExampleLossFn,
    Regularizer,
    build_method,
    make_meta_optimizer,
    per_example_losses,
)
from famus.meta.methods.l2r import L2R
from famus.meta.methods.mlc import MLC
from famus.meta.methods.mwnet import MWNet, default_mwnet

__all__ = [
    "METHODS", "MetaMethod", "PerExampleLossFn", "Regularizer", "build_method", "make_meta_optimizer",
    "per_example_losses", "L2R", "MLC", "MWNet", "default_mwnet",
]
