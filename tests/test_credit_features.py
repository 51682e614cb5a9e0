"""`CreditFeatures`: which fields each scoring pass and mode sets, with their shapes and dtypes."""

import pytest
import torch

from trl_sgcd.scoring import CreditFeatures


torch.set_num_threads(1)


def _empty(**flags):
    values = dict(fused=False, observed_logps=False, sd_support=False) | flags
    return CreditFeatures.empty(3, 5, 4, "cpu", **values)


def test_separate_pass_holds_divergence_and_entropy_only():
    features = _empty()
    assert not features.fused
    assert set(features.tensors()) == {"entropy", "divergence"}
    assert features.divergence.shape == features.entropy.shape == (3, 5)
    assert features.divergence.dtype == torch.float32 and not features.divergence.any()
    with pytest.raises(ValueError, match="no observed-token"):
        _ = features.log_ratio


def test_fused_pass_holds_the_teacher_support_instead_of_the_divergence():
    features = _empty(fused=True, observed_logps=True, sd_support=True)
    assert features.fused and features.divergence is None
    assert set(features.tensors()) == {"entropy", "support_ids", "teacher_q"}
    assert features.support_ids.shape == (3, 5, 5) and features.support_ids.dtype == torch.long
    assert features.teacher_q.shape == (3, 5, 6)


def test_mode_fields_and_log_ratio():
    features = _empty(observed_logps=True, sd_support=True)
    assert set(features.tensors()) == {
        "entropy",
        "divergence",
        "teacher_logps",
        "student_logps",
        "sd_ids",
        "sd_q",
        "sd_keep",
    }
    assert features.sd_ids.shape == features.sd_keep.shape == (3, 5, 5) and features.sd_q.shape == (3, 5, 6)
    assert features.sd_keep.dtype == torch.bool
    features.teacher_logps[0, 1], features.student_logps[0, 1] = -1.0, -3.0
    assert features.log_ratio[0, 1] == 2.0 and features.log_ratio.abs().sum() == 2.0
