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
from .segmenter import SegmenterConfig, Span, robust_zscore, saliency_segments
from .weights import credit_advantages, credit_weights, uniform_weights


__all__ = [
    "DIVERGENCES",
    "SegmenterConfig",
    "Span",
    "credit_advantages",
    "credit_weights",
    "observed_anchored_divergence",
    "project_to_support",
    "robust_zscore",
    "saliency_segments",
    "student_support_divergence",
    "support_divergence",
    "support_entropy",
    "support_keep",
    "teacher_divergence",
    "teacher_topk",
    "uniform_weights",
]
