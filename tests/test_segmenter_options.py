"""Segmenter options: the absolute noise floor (noise keeps `W = 1`) and signed disagreement on the observed token."""

import dataclasses

import pytest
import torch
from test_trainer import _args, _dataset, fixed_reference, parity_reward
from transformers import Qwen3Config, Qwen3ForCausalLM

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.credit import SegmenterConfig, credit_weights, saliency_segments, signed_agreement
from trl_sgcd.credit.divergence import teacher_divergence


torch.set_num_threads(1)


def _random_model_noise(seed: int):
    """Divergence between a random-weight model with and without 60 tokens of 'reference' before its prompt."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        head_dim=16,
    )
    model = Qwen3ForCausalLM(config).eval()
    prompt, reference, completion = (torch.randint(0, 512, (4, n)) for n in (30, 60, 80))
    with torch.no_grad():
        student = model(torch.cat([prompt, completion], 1)).logits[:, prompt.size(1) - 1 : -1]
        teacher = model(torch.cat([reference, prompt, completion], 1)).logits[:, -completion.size(1) - 1 : -1]
    return teacher_divergence(student, teacher, completion)


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_floor_keeps_random_model_noise_at_weight_one(seed):
    d, h = _random_model_noise(seed)
    mask = torch.ones_like(d, dtype=torch.bool)
    assert 0 < d.max() < 1e-2  # noise: far below a real disagreement
    s_paper, spans = saliency_segments(d, h, mask, SegmenterConfig())
    w_paper = credit_weights(s_paper, gamma=1.0, cap=2.0)
    assert spans and (w_paper > 1).float().mean() > 0.02  # the scale-free rule gives noise credit
    s_floor, spans_floor = saliency_segments(d, h, mask, SegmenterConfig(noise_floor=0.01))
    assert not spans_floor and torch.equal(credit_weights(s_floor, 1.0, 2.0), torch.ones_like(d))


def test_noise_floor_keeps_real_spikes_and_cuts_spans_at_noise():
    d = torch.full((1, 40), 1e-4)
    d[0, 10:13] = torch.tensor([2.0, 1.5, 1.2])
    d[0, 13:16] = 5e-3  # would extend the span (z above the reset) but is below the floor
    h = torch.ones_like(d)
    mask = torch.ones_like(d, dtype=torch.bool)
    config = SegmenterConfig(max_selected_fraction=1.0, reset_z=0.01)
    _, spans = saliency_segments(d, h, mask, config)
    assert [(s.start, s.end) for s in spans] == [(10, 15)]
    s, spans = saliency_segments(d, h, mask, dataclasses.replace(config, noise_floor=0.01))
    assert [(s_.start, s_.end) for s_ in spans] == [(10, 12)]
    assert (s[0, 10:13] > 0).all() and (s[0, 13:] == 0).all()


def test_noise_floor_config(tmp_path):
    def config(**kwargs):
        return SGCDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kwargs)

    assert config(segment_noise_floor=0.02).segmenter.noise_floor == 0.02
    assert config().segmenter.noise_floor == 0.0
    with pytest.raises(ValueError, match="segment_noise_floor"):
        config(segment_noise_floor=-1.0)


def test_signed_agreement_keeps_the_teacher_shift_that_agrees_with_the_advantage():
    log_ratio = torch.tensor([[-0.5, 0.3, 0.0], [-0.5, 0.3, 0.0]])
    kept = signed_agreement(log_ratio, torch.tensor([-1.0, 2.0]))
    assert torch.equal(kept, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(signed_agreement(log_ratio, torch.tensor([[-1.0, -1.0, 1.0], [0.0, 1.0, 1.0]])), kept)


def test_signed_segmenter_in_training_zeroes_disagreeing_divergence(tiny_model_path, tmp_path):
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, dynamic_sampling=False, segment_signed=True, max_steps=1),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    scores, seen = [], []
    original_score, original_weigh = trainer._score, trainer._weigh

    def score(*args, **kwargs):
        assert not kwargs["fused"]  # the signed rule needs the separate student pass
        scores.append(original_score(*args, **kwargs))
        return scores[-1]

    def weigh(batch, d, h, mask, any_reference, *groups):
        seen.append((batch["advantages"].clone(), d.clone(), mask.clone()))
        return original_weigh(batch, d, h, mask, any_reference, *groups)

    trainer._score, trainer._weigh = score, weigh
    trainer.train()
    assert scores and seen
    (adv, d, mask), result = seen[0], scores[0]
    log_ratio = result.teacher_logps - result.student_logps
    agree = (log_ratio * adv.unsqueeze(1)) > 0
    expected = result.divergence * mask * agree
    assert torch.equal(d, expected)
    assert (d[mask & agree] > 0).any() and (result.divergence[mask & ~agree] > 0).any()
