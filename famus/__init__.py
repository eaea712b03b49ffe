"""famus: noise-robust deep learning by meta-learning, made fast.

Start with :class:`famus.MetaLearner` for the meta step on any ``nn.Module``.
"""

from famus.meta import ENGINES, METHODS, MetaLearner, MetaUpdate, StepStats, layers
from famus.registry import Registry, UnknownNameError

__version__ = "0.1.0"

__all__ = ["ENGINES", "METHODS", "MetaLearner", "MetaUpdate", "StepStats", "layers", "Registry", "UnknownNameError",
           "__version__"]
