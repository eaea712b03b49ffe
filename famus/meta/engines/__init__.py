"""Meta-gradient engines, by name.

Second-order backprop: ``exact``, ``famus``, ``block``, ``random``. Forward mode (no double
backward): ``jvp``, ``fd``, ``famus-jvp``, ``famus-fd``.
"""

from famus.meta.engines import directional as _directional  # noqa: F401  (registers)
from famus.meta.engines import famus as _famus  # noqa: F401  (registers)
from famus.meta.engines import second_order as _second_order  # noqa: F401  (registers)
from famus.meta.engines.base import DEFAULT_ENGINE, ENGINES, STAGES, Engine, MetaBatch, MetaResult, build_engine

__all__ = ["DEFAULT_ENGINE", "ENGINES", "STAGES", "Engine", "MetaBatch", "MetaResult", "build_engine"]
