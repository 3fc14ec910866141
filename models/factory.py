"""The models layer's entry points for the platform.

``paralab.models`` has no ``__init__.py`` (see pyproject), so the platform imports from here:
``from paralab.models.factory import build_model``.
"""

from paralab.models.config import ModelConfig
from paralab.models.flops import count_params, param_count, training_flops_per_token
from paralab.models.lm import LanguageModel, LMState, build_model
from paralab.models.loss import lm_loss
from paralab.models.registry import get_cell, register_cell, registered_cells

__all__ = [
    "LMState",
    "LanguageModel",
    "ModelConfig",
    "build_model",
    "count_params",
    "get_cell",
    "lm_loss",
    "param_count",
    "register_cell",
    "registered_cells",
    "training_flops_per_token",
]
