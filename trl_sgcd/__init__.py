"""Sibling-Guided Credit Distillation (SGCD) for Hugging Face TRL."""

from .config import SGCDConfig
from .credit import credit_advantages, credit_weights, saliency_segments, teacher_divergence
from .references.base import CallableCreditReference, CreditReferenceProvider, as_provider
from .siblings import CreditReference, Sibling, SiblingGroup
from .trainer import SGCDGRPOTrainer


__version__ = "0.1.0"

__all__ = [
    "CallableCreditReference",
    "CreditReference",
    "CreditReferenceProvider",
    "SGCDConfig",
    "SGCDGRPOTrainer",
    "Sibling",
    "SiblingGroup",
    "as_provider",
    "credit_advantages",
    "credit_weights",
    "saliency_segments",
    "teacher_divergence",
]


def __getattr__(name):
    # Providers live in their own modules; import them lazily so `import trl_sgcd` never imports litellm.
    if name == "ContrastCreditReference":
        from .references.contrast import ContrastCreditReference

        return ContrastCreditReference
    if name == "LiteLLMCreditReference":
        from .references.litellm_provider import LiteLLMCreditReference

        return LiteLLMCreditReference
    raise AttributeError(f"module 'trl_sgcd' has no attribute {name!r}")
