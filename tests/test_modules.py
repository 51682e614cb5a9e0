"""The module layout: credit-mode table, shared helpers, dump readers, module sizes."""

from pathlib import Path

import pytest
import torch

from trl_sgcd.config import CREDIT_MODE_SPECS, CREDIT_MODES, FUSABLE_MODES, TOKEN_LEVEL_MODES, SGCDConfig
from trl_sgcd.credit.divergence import with_tail_bucket
from trl_sgcd.credit.segmenter import SegmenterConfig
from trl_sgcd.credit_dump import available_steps, iter_records, load_step
from trl_sgcd.siblings import Sibling, SiblingGroup, is_mixed


torch.set_num_threads(1)
PACKAGE = Path(__file__).resolve().parents[1] / "trl_sgcd"


def test_credit_mode_table():
    assert CREDIT_MODES == ("sgcd", "off", "uniform", "sibling_context", "direct_sd", "sdpo")
    assert TOKEN_LEVEL_MODES == ("sgcd", "uniform", "sibling_context", "sdpo")
    assert FUSABLE_MODES == ("sgcd", "uniform", "sibling_context")
    assert [m for m, s in CREDIT_MODE_SPECS.items() if not s.scores] == ["off"]
    assert [m for m, s in CREDIT_MODE_SPECS.items() if s.raw_reference] == ["sibling_context", "sdpo"]
    assert [m for m, s in CREDIT_MODE_SPECS.items() if s.aux_sd_loss] == ["direct_sd"]
    assert SGCDConfig("out", bf16=False, credit_mode="uniform").credit_spec.weights == "uniform"
    with pytest.raises(ValueError, match="student_pass='fused'"):
        SGCDConfig("out", bf16=False, credit_mode="sdpo", student_pass="fused")


def test_segmenter_defaults_have_one_home():
    assert SGCDConfig("out", bf16=False).segmenter == SegmenterConfig()


def test_is_mixed():
    assert not is_mixed([True, True]) and not is_mixed([False, False]) and is_mixed([True, False])
    group = SiblingGroup(prompt=[], siblings=[Sibling([], 1.0, True), Sibling([], 0.0, False)])
    assert group.is_mixed


def test_tail_bucket():
    p = torch.tensor([[0.5, 0.25], [0.7, 0.31]])
    out = with_tail_bucket(p)
    assert torch.allclose(out[0], torch.tensor([0.5, 0.25, 0.25]))
    assert out[1, 2] == 0.0  # rounding beyond 1 never gives negative mass


def test_dump_readers_without_dump(tmp_path):
    assert list(iter_records(tmp_path)) == []
    with pytest.raises(FileNotFoundError, match="credit_log_steps"):
        load_step(tmp_path)
    with pytest.raises(FileNotFoundError):
        available_steps(tmp_path)


def test_module_sizes():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes["trainer.py"] <= 500
    for name in ("scoring.py", "dynamic_sampling.py", "credit_dump.py", "credit_logging.py", "config.py"):
        assert sizes[name] <= 600, name
