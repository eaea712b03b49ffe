"""Meta-gradient engines, by name (each module registers its engines on import).

Second-order backprop: ``exact``, ``famus``, ``block``, ``random``. Forward mode (no double
backward): ``jvp``, ``fd``, ``famus-jvp``, ``famus-fd``. ``auto``: ``exact`` or ``fd``, whichever is faster on
the model (timed on the first meta step). Every engine is a layer policy over a backend
(:func:`~famus.meta.engines.base.over`).
"""

from famus.meta.engines import auto as _auto  # noqa: F401  (registers)
from famus.meta.engines import famus as _famus  # noqa: F401  (registers)
from famus.meta.engines import fixed as _fixed  # noqa: F401  (registers)
from famus.meta.engines.base import (
    DEFAULT_ENGINE,
    ENGINES,
    STAGES,
    Backend,
    Engine,
    MetaBatch,
    MetaResult,
    Sampler,
    VirtualTrain,
    build_engine,
)

__all__ = ["DEFAULT_ENGINE", "ENGINES", "STAGES", "Backend", "Engine", "MetaBatch", "MetaResult", "Sampler",
           "VirtualTrain", "build_engine"]
