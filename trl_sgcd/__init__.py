"""Sibling-Guided Credit Distillation (SGCD) for Hugging Face TRL.

Names are imported lazily, so `import trl_sgcd.envs.appworld` (or any light submodule) does not pay for importing
torch, TRL or litellm.
"""

from importlib import import_module
from typing import TYPE_CHECKING


__version__ = "0.1.0"

_EXPORTS = {
    "SGCDConfig": ".config",
    "SGCDGRPOTrainer": ".trainer",
    "Sibling": ".siblings",
    "SiblingGroup": ".siblings",
    "CreditReference": ".siblings",
    "CreditReferenceProvider": ".references.base",
    "CallableCreditReference": ".references.base",
    "as_provider": ".references.base",
    "ContrastCreditReference": ".references.contrast",
    "LiteLLMCreditReference": ".references.litellm_provider",
    "credit_advantages": ".credit",
    "credit_weights": ".credit",
    "saliency_segments": ".credit",
    "teacher_divergence": ".credit",
    "uniform_weights": ".credit",
}

__all__ = [
    "CallableCreditReference",
    "ContrastCreditReference",
    "CreditReference",
    "CreditReferenceProvider",
    "LiteLLMCreditReference",
    "SGCDConfig",
    "SGCDGRPOTrainer",
    "Sibling",
    "SiblingGroup",
    "as_provider",
    "credit_advantages",
    "credit_weights",
    "saliency_segments",
    "teacher_divergence",
    "uniform_weights",
]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'trl_sgcd' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:
    from .config import SGCDConfig
    from .credit import credit_advantages, credit_weights, saliency_segments, teacher_divergence, uniform_weights
    from .references.base import CallableCreditReference, CreditReferenceProvider, as_provider
    from .references.contrast import ContrastCreditReference
    from .references.litellm_provider import LiteLLMCreditReference
    from .siblings import CreditReference, Sibling, SiblingGroup
    from .trainer import SGCDGRPOTrainer
