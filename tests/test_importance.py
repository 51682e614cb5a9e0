"""GSPO-token: `importance_sampling_level="sequence"` with per-token credit, on TRL's own loss."""

import pytest
import torch
from test_trainer import _args, _dataset, _params, _scored_batch, fixed_reference, parity_reward
from transformers import AutoModelForCausalLM

from trl_sgcd import SGCDGRPOTrainer
from trl_sgcd.credit import gspo_token_old_logps, sequence_log_ratio


def test_sequence_log_ratio_is_the_masked_mean_and_the_old_logps_give_the_gspo_token_ratio():
    torch.manual_seed(0)
    logps = torch.randn(3, 5, requires_grad=True)
    old = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    log_s = sequence_log_ratio(logps.detach(), old, mask)
    assert log_s.shape == (3, 1)
    torch.testing.assert_close(log_s[0, 0], (logps[0, :3] - old[0, :3]).mean().detach())
    torch.testing.assert_close(log_s[1, 0], (logps[1] - old[1]).mean().detach())
    assert log_s[2, 0] == 0  # an empty sequence has ratio 1
    new_old = gspo_token_old_logps(logps, old, mask)
    assert not new_old.requires_grad
    ratio = torch.exp(logps - new_old)
    # Value: s_i on every token; gradient: s_i · ∇log π(y_t).
    torch.testing.assert_close(ratio.detach(), torch.exp(log_s).expand(3, 5))
    weights = torch.rand(3, 5)
    (ratio * weights).sum().backward()
    torch.testing.assert_close(logps.grad, torch.exp(log_s) * weights)


def _gspo_trainer(tmp_path, tiny_model_path, **overrides):
    values = dict(
        dynamic_sampling=False,
        importance_sampling_level="sequence",
        num_iterations=2,  # TRL then keeps the sampling policy's log-probabilities: the ratio is not 1
        bf16=False,
        student_pass="separate",
    )
    values.update(overrides)
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, **values),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _off_policy_batch(trainer):
    """A scored batch whose "old" log-probabilities are moved per token, as after a few optimizer steps."""
    inputs = _scored_batch(trainer)
    assert inputs.get("old_per_token_logps") is not None
    torch.manual_seed(1)
    old = inputs["old_per_token_logps"]
    shift = torch.linspace(-0.5, 0.5, old.size(0)).unsqueeze(1)  # some sequences leave the clip range
    inputs["old_per_token_logps"] = old + shift + 0.3 * torch.randn_like(old)
    return inputs


def _grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _loss_and_grad(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), _grad(trainer.model)


def _reference_loss(trainer, inputs, loss_type):
    """GSPO-token written out from the paper, independent of TRL's loss code and of `credit.importance`."""
    mask = (inputs["completion_mask"] * inputs.get("tool_mask", 1)).float()
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, input_ids, attention, inputs["completion_ids"].size(1)
    )
    lengths = mask.sum(1, keepdim=True).clamp(min=1)
    s = torch.exp(((logps.detach() - inputs["old_per_token_logps"]) * mask).sum(1, keepdim=True) / lengths)
    ratio = s * torch.exp(logps - logps.detach())
    adv = inputs["advantages"] if inputs["advantages"].dim() == 2 else inputs["advantages"][:, None]
    eps_low, eps_high = trainer.args.epsilon, trainer.args.epsilon_high or trainer.args.epsilon
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    if loss_type == "grpo":
        return ((per_token * mask).sum(1) / lengths.squeeze(1)).mean(), s
    normalizer = inputs["num_items_in_batch"] / trainer.args.steps_per_generation  # dapo, one process
    return (per_token * mask).sum() / normalizer, s


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_gspo_token_loss_and_gradient_match_an_independent_implementation(tiny_model_path, tmp_path, loss_type):
    trainer = _gspo_trainer(tmp_path, tiny_model_path, loss_type=loss_type)
    assert trainer.importance_sampling_level == "token" and trainer._gspo_token
    inputs = _off_policy_batch(trainer)
    assert inputs["advantages"].dim() == 2 and (inputs["advantages"].abs() > 0).any()
    old = inputs["old_per_token_logps"].clone()
    loss, grad = _loss_and_grad(trainer, inputs)
    assert torch.equal(inputs["old_per_token_logps"], old)  # TRL's buffered batch is left untouched

    trainer.model.zero_grad(set_to_none=True)
    ref_loss, s = _reference_loss(trainer, inputs, loss_type)
    ref_loss.backward()
    ref_grad = _grad(trainer.model)
    assert (s - 1).abs().max() > 0.05  # off-policy: the sequence ratios differ from 1 ...
    eps = trainer.args.epsilon
    assert ((s < 1 - eps) | (s > 1 + eps)).any()  # ... and some are outside the clip range
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert grad.abs().max() > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo"])
def test_with_unit_weights_the_gradient_equals_trl_sequence_level_gspo(tiny_model_path, tmp_path, loss_type):
    """GSPO paper: with per-sequence advantages GSPO-token and GSPO have the same gradient."""
    trainer = _gspo_trainer(tmp_path, tiny_model_path, loss_type=loss_type, credit_gamma=0.0)
    inputs = _off_policy_batch(trainer)
    advantages = inputs["advantages"]
    assert advantages.dim() == 2  # W ≡ 1 exactly: A[:, None] on every token
    per_sequence = advantages[:, 0]
    torch.testing.assert_close(advantages, per_sequence[:, None].expand_as(advantages), rtol=0, atol=0)
    _, gspo_token = _loss_and_grad(trainer, inputs)

    trainer._gspo_token, trainer.importance_sampling_level = False, "sequence"  # TRL's own GSPO
    _, gspo = _loss_and_grad(trainer, {**inputs, "advantages": per_sequence})
    torch.testing.assert_close(gspo_token, gspo, rtol=1e-4, atol=1e-7)
    assert gspo.abs().max() > 0


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_sequence_level_credit_trains_end_to_end(tiny_model_path, tmp_path, num_iterations):
    trainer = _gspo_trainer(
        tmp_path,
        tiny_model_path,
        num_iterations=num_iterations,
        dynamic_sampling=True,
        student_pass="auto",
        segment_baseline="rollout",  # keeps the student pass fusable
        loss_type="grpo",
        max_steps=2 * num_iterations,
    )
    assert trainer._fuse_student == (num_iterations == 1)
    before = _params(AutoModelForCausalLM.from_pretrained(tiny_model_path))
    trainer.train()
    after = _params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    logs = [h for h in trainer.state.log_history if "sgcd/weights/max" in h]
    assert logs and max(h["sgcd/weights/max"] for h in logs) > 1.0
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
