"""The meta step: learner, methods, engines and the FaMUS sampler."""

from famus.meta.diagnostics import layer_contributions
from famus.meta.engines import ENGINES, STAGES, Engine, MetaBatch, MetaResult, VirtualTrain, build_engine
from famus.meta.layers import LayerInfo, layer_infos, layers
from famus.meta.learner import MetaLearner, MetaUpdate, StepStats
from famus.meta.methods import L2R, METHODS, MLC, MetaMethod, MWNet, build_method

__all__ = [
    "ENGINES", "STAGES", "Engine", "MetaBatch", "MetaResult", "VirtualTrain", "build_engine",
    "LayerInfo", "layer_infos", "layers", "MetaLearner", "MetaUpdate", "StepStats",
    "L2R", "METHODS", "MLC", "MetaMethod", "MWNet", "build_method", "layer_contributions",
]
