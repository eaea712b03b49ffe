"""famus: noise-robust deep learning by meta-learning, made fast.

Start with :class:`famus.MetaLearner` for the meta step on any ``nn.Module``.
"""

from famus import log  # noqa: F401 (famus.log.enable(): the commands' one-line messages, for scripts)
from famus.issues import LabelIssues, label_issues
from famus.meta import ENGINES, METHODS, MetaLearner, MetaUpdate, StepStats, build_engine, build_method, layers
from famus.registry import Registry, UnknownNameError

__version__ = "0.1.0"

__all__ = ["ENGINES", "METHODS", "LabelIssues", "MetaLearner", "MetaUpdate", "StepStats", "build_engine",
           "build_method", "label_issues", "layers", "Registry", "UnknownNameError", "__version__"]
