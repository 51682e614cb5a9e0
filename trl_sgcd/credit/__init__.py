"""The credit pipeline as pure tensor functions: divergence → saliency → bounded weights → token advantages."""

from .divergence import (
    DIVERGENCES,
    observed_anchored_divergence,
    project_to_support,
    student_support_divergence,
    support_divergence,
    support_entropy,
    support_keep,
    teacher_divergence,
    teacher_topk,
)
from .importance import gspo_token_old_logps, sequence_log_ratio
from .segmenter import (
    BASELINES,
    SegmenterConfig,
    Span,
    aligned_positions,
    position_baseline,
    robust_zscore,
    saliency_segments,
    signed_agreement,
)
from .weights import credit_advantages, credit_weights, uniform_weights


__all__ = [
    "BASELINES",
    "DIVERGENCES",
    "SegmenterConfig",
    "Span",
    "aligned_positions",
    "credit_advantages",
    "credit_weights",
    "gspo_token_old_logps",
    "observed_anchored_divergence",
    "position_baseline",
    "project_to_support",
    "robust_zscore",
    "saliency_segments",
    "signed_agreement",
    "sequence_log_ratio",
    "student_support_divergence",
    "support_divergence",
    "support_entropy",
    "support_keep",
    "teacher_divergence",
    "teacher_topk",
    "uniform_weights",
]
