"""Meta-gradient engines, by name: ``exact``, ``famus``, ``block``, ``random``."""

from famus.meta.engines import famus as _famus  # noqa: F401  (registers)
from famus.meta.engines import second_order as _second_order  # noqa: F401  (registers)
from famus.meta.engines.base import ENGINES, STAGES, Engine, MetaBatch, MetaResult, build_engine

__all__ = ["ENGINES", "STAGES", "Engine", "MetaBatch", "MetaResult", "build_engine"]
