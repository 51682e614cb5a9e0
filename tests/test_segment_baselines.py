"""Segment baselines (`segment_baseline`): what a divergence spike is measured against, on hand-made traces."""

import json

import pytest
import torch
from test_trainer import _args, _dataset, fixed_reference, parity_reward

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.credit import (
    SegmenterConfig,
    aligned_positions,
    credit_weights,
    position_baseline,
    saliency_segments,
)
from trl_sgcd.credit_dump import iter_records


torch.set_num_threads(1)


def _noise(rows: int, cols: int, seed: int = 0, level: float = 4.0, spread: float = 0.3) -> torch.Tensor:
    """A summary reference's shift: every token diverges by about `level` nats."""
    generator = torch.Generator().manual_seed(seed)
    return level + spread * torch.rand(rows, cols, generator=generator)


def _segment(d, baseline, groups=None, advantages=None, assistant_mask=None, **overrides):
    mask = torch.ones_like(d, dtype=torch.bool) if assistant_mask is None else assistant_mask
    config = SegmenterConfig(baseline=baseline, **overrides)
    return saliency_segments(
        d, torch.zeros_like(d), mask, config, groups=groups, advantages=advantages, assistant_mask=assistant_mask
    )


def test_aligned_positions_count_turns_and_offsets_across_tool_tokens():
    assistant = torch.tensor([[1, 1, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 1, 0]], dtype=torch.bool)
    turn, offset = aligned_positions(assistant)
    assert turn[0][assistant[0]].tolist() == [0, 0, 1, 1, 1]
    assert offset[0][assistant[0]].tolist() == [0, 1, 0, 1, 2]
    assert turn[1][assistant[1]].tolist() == [0, 0, 0, 1]
    assert offset[1][assistant[1]].tolist() == [0, 1, 2, 0]


def test_position_baseline_is_the_other_siblings_mean_at_the_aligned_position():
    # Row 1's tool result is 2 tokens longer than row 0's: turn 1 starts at column 4 in row 0, at 6 in row 1.
    assistant = torch.tensor(
        [
            [1, 1, 1, 0, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 1, 1, 1],
            [1, 1, 1, 0, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    d = torch.arange(36, dtype=torch.float32).reshape(4, 9) * assistant
    groups = torch.tensor([0, 0, 0, 1])
    base = position_baseline(d, assistant, assistant, groups)
    # Row 0, turn 1 offset 0 (column 4): rows 1 (column 6, d=15) and 2 (column 4, d=22).
    assert base[0, 4] == pytest.approx((15 + 22) / 2)
    # Row 0, turn 0 offset 1: rows 1 and 2 at column 1.
    assert base[0, 1] == pytest.approx((10 + 19) / 2)
    # Row 1, turn 1 offset 2 (column 8): only row 2 reaches it (column 6, d=24).
    assert base[1, 8] == pytest.approx(24.0)
    # Row 3 is alone in its group: no baseline.
    assert torch.equal(base[3], torch.zeros(9))
    # With only row 2 allowed as baseline (the one successful sibling), row 0 sees row 2 alone.
    positive = torch.tensor([False, False, True, False])
    base_pos = position_baseline(d, assistant, assistant, groups, positive)
    assert base_pos[0, 4] == pytest.approx(22.0) and base_pos[0, 1] == pytest.approx(19.0)
    # Row 2 has no other positive sibling: it falls back to all of its siblings.
    assert base_pos[2, 1] == pytest.approx(base[2, 1]) == pytest.approx((1 + 10) / 2)


def test_position_baseline_where_no_sibling_reaches_the_position_is_the_siblings_median():
    assistant = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    d = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 9.0], [2.0, 6.0, 0.0, 0.0, 0.0, 0.0]])
    base = position_baseline(d, assistant, assistant, torch.tensor([0, 0]))
    assert base[0, :2].tolist() == [2.0, 6.0]
    assert base[0, 2:].tolist() == [2.0] * 4  # torch's median of [2, 6] is the lower one


def test_position_baseline_removes_a_spike_every_sibling_shares_and_keeps_the_deviation():
    """The reference shifts all siblings on their shared opening move (columns 3-4); the failed row 0 alone also
    diverges on its wrong call (columns 20-21). The paper's rule credits both in row 0; the position baseline only the
    wrong call."""
    d = _noise(4, 30)
    d[:, 3:5] += 6.0
    d[0, 20:22] += 6.0
    groups = torch.tensor([0, 0, 0, 0])
    s_paper, _ = _segment(d, "rollout")
    assert (s_paper[0, 3:5] > 0).all() and (s_paper[0, 20:22] > 0).all()
    s_pos, spans = _segment(d, "position", groups=groups)
    assert (s_pos[0, 3:5] == 0).all() and (s_pos[0, 20:22] > 0).all()
    assert {(sp.row, sp.start) for sp in spans} == {(0, 20)}
    assert (s_pos[1:] == 0).all()
    s_succ, _ = _segment(d, "success_position", groups=groups, advantages=torch.tensor([-1.0, 1.0, 1.0, -1.0]))
    assert (s_succ[0, 3:5] == 0).all() and (s_succ[0, 20:22] > 0).all()


def test_group_baseline_pools_the_normalisation_over_the_siblings():
    """Row 0 is flat with one small bump, which is a spike within the row; against the group's spread (rows 1-2) it
    is not, while row 1's large value stays a spike."""
    d = torch.full((3, 40), 4.0)
    d[0, 10] = 4.3
    d[1:] = _noise(2, 40, seed=1, level=2.0, spread=4.0)
    d[1, 30] = 12.0
    groups = torch.tensor([0, 0, 0])
    s_paper, _ = _segment(d, "rollout")
    assert s_paper[0, 10] > 0 and s_paper[1, 30] > 0
    s_group, _ = _segment(d, "group", groups=groups)
    assert s_group[0, 10] == 0 and s_group[1, 30] > 0
    assert (s_group[0] == 0).all()


def test_group_options_equal_the_paper_rule_when_every_row_is_alone():
    d = _noise(3, 50, seed=2, spread=2.0)
    d[0, 7] = 15.0
    d[2, 40:43] = 12.0
    alone = torch.tensor([0, 1, 2])
    s_paper, spans_paper = _segment(d, "rollout")
    assert spans_paper
    for baseline in ("group", "position", "success_position"):
        s, spans = _segment(d, baseline, groups=alone, advantages=torch.tensor([-1.0, 1.0, -1.0]))
        assert torch.equal(s, s_paper), baseline
        assert [(x.row, x.start, x.end) for x in spans] == [(x.row, x.start, x.end) for x in spans_paper]


def test_noise_floor_and_minimum_divergence_apply_to_the_raw_divergence():
    d = torch.full((2, 30), 1e-3)
    d[0, 5] = 5e-3  # above every sibling at that position, but below the floor
    _, spans = _segment(d, "position", groups=torch.tensor([0, 0]))
    assert [(sp.row, sp.start) for sp in spans] == [(0, 5)]
    _, spans = _segment(d, "position", groups=torch.tensor([0, 0]), noise_floor=0.01)
    assert not spans


def test_without_groups_every_row_is_alone_and_success_position_needs_advantages():
    d = _noise(2, 40, spread=2.0)
    d[1, 12] = 15.0
    s_paper, _ = _segment(d, "rollout")
    for baseline in ("group", "position", "success_position"):
        assert torch.equal(_segment(d, baseline)[0], s_paper)
    with pytest.raises(ValueError, match="sequence advantages"):
        _segment(d, "success_position", groups=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="Unknown segment baseline"):
        SegmenterConfig(baseline="nearby")


def test_segment_baseline_config(tmp_path):
    def config(**kwargs):
        return SGCDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kwargs)

    assert config().segmenter.baseline == "success_position" == SegmenterConfig().baseline
    assert config().segmenter_needs_batch and not config(segment_baseline="rollout").segmenter_needs_batch
    assert config(segment_baseline="position").segmenter.baseline == "position"
    assert config(segment_baseline="group").segmenter_needs_batch and config(segment_signed=True).segmenter_needs_batch
    with pytest.raises(ValueError, match="segment_baseline"):
        config(segment_baseline="per_token")


@pytest.mark.parametrize("baseline", ["position", "group"])
def test_training_with_a_segment_baseline_uses_the_batch_and_the_dump_reproduces_the_weights(
    baseline, tiny_model_path, tmp_path
):
    """The trainer passes each row's group to the segmenter (separate student pass); re-running the segmenter on the
    dumped features with the dumped groups gives the dumped weights exactly."""
    args = _args(tmp_path, dynamic_sampling=False, segment_baseline=baseline, max_steps=1, credit_log_steps=1)
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    fused = []
    original_score = trainer._score

    def score(*a, **kw):
        fused.append(kw["fused"])
        return original_score(*a, **kw)

    trainer._score = score
    trainer.train()
    assert fused == [False]
    records = sorted(iter_records(args.output_dir), key=lambda r: r["row"])
    rows = [r for r in records if r["reference"] is not None]
    assert rows and all(len(r["divergence"]) == len(r["weights"]) == len(r["log_ratio"]) for r in rows)
    width = max(len(r["weights"]) for r in rows)

    def pad(key, dtype=torch.float32):
        return torch.tensor([r[key] + [0] * (width - len(r[key])) for r in rows], dtype=dtype)

    credit = pad("credit_mask", torch.bool)
    groups = torch.tensor([r["group"] for r in rows])
    assert len(set(groups.tolist())) < len(rows)  # siblings share a group
    s, _ = saliency_segments(
        pad("divergence") * credit,
        pad("entropy"),
        credit,
        args.segmenter,
        groups=groups,
        advantages=torch.tensor([r["sequence_advantage"] for r in rows]),
        assistant_mask=pad("assistant_mask", torch.bool),
    )
    expected = credit_weights(s, args.credit_gamma, args.credit_cap)
    assert torch.equal(pad("weights"), torch.where(credit, expected, pad("weights")))
    assert all(w == 1 for r in rows for w, c in zip(r["weights"], r["credit_mask"], strict=True) if not c)
    assert (pad("weights") > 1).any()
    # The groups were used: the rollout-by-rollout rule gives other weights on the same features.
    s_paper, _ = saliency_segments(pad("divergence") * credit, pad("entropy"), credit, SegmenterConfig(spike_z=1.5))
    assert not torch.equal(s_paper, s)
    json.dumps(records)  # the dump stays plain JSON
