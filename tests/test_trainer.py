"""Integration tests: real `SGCDGRPOTrainer` steps on a tiny local model, and the paper's App. A properties."""

import asyncio
import time

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

import trl_sgcd.scoring as scoring_module
from trl_sgcd import CreditReference, SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.trainer import _active_dropout


MODES = ["sgcd", "off", "uniform", "sibling_context", "direct_sd", "sdpo"]


def _dataset(n=16):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"book flight F{i} for user u{i}"}]} for i in range(n)]
    )


def parity_reward(completions, **kwargs):
    """A deterministic reward a random policy satisfies about half the time, so most groups are mixed."""
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def fixed_reference(group):
    return "State checks: verify the user first. Failed branches: answering without a lookup."


def _common(tmp_path):
    return dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=7,
    )


def _args(tmp_path, **overrides):
    values = _common(tmp_path) | dict(divergence_top_k=16, segment_spike_z=1.5)
    values.update(overrides)
    return SGCDConfig(**values)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _spy_credit(trainer):
    """Records TRL's sequence advantages and the credit-weighted result of every `_apply_credit` call."""
    calls = []
    original = trainer._apply_credit

    def spy(output, rollouts):
        before = output["advantages"].clone()
        result = original(output, rollouts)
        calls.append((before, result, rollouts))
        return result

    trainer._apply_credit = spy
    return calls


def _spy_weights(trainer):
    """Records `(sequence advantages, batch)` for every batch the credit weights are formed for: the generation
    batch with a separate student pass, each loss micro-batch with the fused one (`batch["advantages"]` is `A · W`)."""
    calls = []
    original = trainer._weigh

    def spy(batch, d, h, mask, any_reference, *groups):
        before = batch["advantages"].clone()
        weights = original(batch, d, h, mask, any_reference, *groups)
        calls.append((before, batch))
        return weights

    trainer._weigh = spy
    return calls


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"credit_gamma": -0.5}, "credit_gamma must be >= 0, got -0.5"),
        ({"credit_cap": 1.0}, "credit_cap must be > 1"),
        ({"divergence_top_k": 0}, "divergence_top_k must be >= 1, got 0"),
        ({"credit_mode": "magic"}, "credit_mode='magic'"),
        ({"divergence": "kl"}, "divergence='kl'"),
        ({"num_generations": 1, "per_device_train_batch_size": 2}, "num_generations=1"),
        ({"reference_template": "no placeholder"}, "reference_template must contain"),
        ({"segment_max_fraction": 0.0}, "segment_max_fraction must be in"),
        ({"provider_timeout": 0}, "provider_timeout must be > 0"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **overrides)


def test_sequence_level_is_allowed_in_every_mode(tmp_path):
    for mode in MODES:
        assert _args(tmp_path, importance_sampling_level="sequence", credit_mode=mode).credit_mode == mode


def test_trainer_rejects_plain_grpo_config_and_missing_dataset(tiny_model_path, tmp_path):
    with pytest.raises(TypeError, match="needs an SGCDConfig"):
        SGCDGRPOTrainer(
            model=tiny_model_path,
            reward_funcs=parity_reward,
            args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
            train_dataset=_dataset(),
        )
    with pytest.raises(TypeError, match="credit_reference"):
        SGCDGRPOTrainer(
            model=tiny_model_path,
            reward_funcs=parity_reward,
            args=_args(tmp_path, dynamic_sampling=False),
            train_dataset=_dataset(),
            credit_reference=42,
        )


# ---------------------------------------------------------------- equivalence with GRPOTrainer


def _grpo_args(tmp_path):
    return GRPOConfig(**_common(tmp_path))


@pytest.mark.parametrize("mode_overrides", [{"credit_mode": "off"}, {"credit_mode": "sgcd", "credit_gamma": 0.0}])
def test_off_and_zero_gamma_train_exactly_like_grpo(tiny_model_path, tmp_path, mode_overrides):
    grpo = GRPOTrainer(
        model=tiny_model_path, reward_funcs=parity_reward, args=_grpo_args(tmp_path / "g"), train_dataset=_dataset()
    )
    grpo.train()
    sgcd = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path / "s", dynamic_sampling=False, **mode_overrides),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    sgcd.train()
    reference, ours = _params(grpo.model), _params(sgcd.model)
    initial = _params(AutoModelForCausalLM.from_pretrained(tiny_model_path))
    assert any(not torch.equal(initial[name], reference[name]) for name in reference)  # training did move the model
    for name in reference:
        if mode_overrides["credit_mode"] == "off":
            assert torch.equal(reference[name], ours[name]), name
        else:  # γ = 0: the teacher pass runs and W ≡ 1 exactly, advantages become (B, T) = A[:, None]
            torch.testing.assert_close(reference[name], ours[name], rtol=0, atol=1e-7)
    if mode_overrides["credit_mode"] == "sgcd":
        logs = [h for h in sgcd.state.log_history if "sgcd/weights/max" in h]
        assert logs and all(h["sgcd/weights/max"] == 1.0 for h in logs)
        assert any(h["sgcd/reference/groups_with_reference"] > 0 for h in logs)


# ---------------------------------------------------------------- App. A properties on TRL's own loss


def _scored_batch(trainer, n=8):
    """One generation batch laid out like TRL's sampler: each prompt repeated `num_generations` times."""
    dataset = _dataset()
    rows = [dataset[i // trainer.num_generations] for i in range(n)]
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


def _loss_and_grad(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return loss.detach(), grad


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_per_token_loss_and_gradient_are_w_times_grpo(tiny_model_path, tmp_path, beta):
    """Prop. 2: ℓ_SGCD = W·ℓ_GRPO and ∇ℓ_SGCD = W·∇ℓ_GRPO per token; with β > 0 the KL term is *not* scaled by W."""
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, credit_mode="off", dynamic_sampling=False, beta=beta, loss_type="dapo", bf16=False),
        train_dataset=_dataset(),
    )
    trainer.current_gradient_accumulation_steps = 1
    inputs = _scored_batch(trainer)
    advantages = inputs["advantages"]
    if beta:
        # Make the reference differ from the policy so the KL term is non-zero.
        inputs["ref_per_token_logps"] = inputs.get("ref_per_token_logps") - 0.3
    rows = [i for i in range(advantages.size(0)) if advantages[i] != 0][:3]
    assert rows, "the batch needs rows with non-zero advantage"
    torch.manual_seed(0)
    weights = 1.0 + torch.rand_like(inputs["completion_mask"], dtype=torch.float32)
    checked = 0
    for i in rows:
        for t in (0, 3):
            one_hot = torch.zeros_like(inputs["completion_mask"])
            one_hot[i, t] = 1  # tool_mask restricts the loss to token (i, t) without touching attention
            base = {**inputs, "tool_mask": one_hot, "num_items_in_batch": torch.tensor(1.0)}
            l_grpo, g_grpo = _loss_and_grad(trainer, {**base, "advantages": advantages})
            l_sgcd, g_sgcd = _loss_and_grad(trainer, {**base, "advantages": advantages[:, None] * weights})
            l_kl, g_kl = _loss_and_grad(trainer, {**base, "advantages": torch.zeros_like(advantages)})
            w = weights[i, t]
            torch.testing.assert_close(l_sgcd - l_kl, w * (l_grpo - l_kl), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(g_sgcd - g_kl, w * (g_grpo - g_kl), rtol=1e-3, atol=1e-6)
            if beta:
                assert l_kl.abs() > 1e-6  # the KL term exists and was left unweighted
            else:
                assert l_kl.abs() < 1e-8
            # Cor. 2: tokenwise alignment with GRPO.
            assert torch.dot(g_sgcd - g_kl, g_grpo - g_kl) >= 0
            checked += 1
    assert checked == 2 * len(rows)


def test_credit_advantages_are_detached_sign_preserving_and_bounded(tiny_model_path, tmp_path):
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, dynamic_sampling=False, credit_cap=1.8, student_pass="separate"),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    calls = _spy_credit(trainer)
    out = _scored_batch(trainer)
    before, after, _ = calls[-1]
    assert after is out and out["advantages"].shape == out["completion_ids"].shape
    assert not out["advantages"].requires_grad  # ∂W/∂θ = 0
    nonzero = before != 0
    w = out["advantages"][nonzero] / before[nonzero].unsqueeze(1)
    assert (w >= 1 - 1e-6).all() and (w <= 1.8 + 1e-6).all()  # sign(Â) = sign(A), |Â| ≤ c|A|
    loss_mask = out["completion_mask"].bool()
    assert torch.allclose(w[~loss_mask[nonzero]], torch.ones(1))  # padding never gets credit
    assert (w > 1).any()


# ---------------------------------------------------------------- every mode trains


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_and_logs_credit(tiny_model_path, tmp_path, mode):
    provider_calls = []

    def provider(group):
        provider_calls.append(group)
        return fixed_reference(group)

    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, credit_mode=mode, max_resample_rounds=2),
        train_dataset=_dataset(),
        credit_reference=provider,
    )
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    logs = [h for h in trainer.state.log_history if "sgcd/sampling/rounds" in h]
    assert len(logs) == 2 and all(h["sgcd/sampling/rounds"] >= 1 for h in logs)
    if mode in ("off", "sibling_context", "sdpo"):
        assert provider_calls == []  # no summariser in these modes
    else:
        assert len(provider_calls) == sum(h["sgcd/provider/calls"] for h in logs) > 0
    if mode == "off":
        assert not any("sgcd/provider/calls" in h for h in logs)
        return
    assert sum(h["sgcd/reference/groups_with_reference"] for h in logs) > 0
    assert max(h["sgcd/divergence/max"] for h in logs) > 0
    if mode in ("sgcd", "sibling_context"):
        assert max(h["sgcd/weights/max"] for h in logs) > 1
        assert sum(h["sgcd/segments/count"] for h in logs) > 0
        assert max(h["sgcd/advantage_inflation"] for h in logs) > 1
    if mode == "uniform":
        assert max(h["sgcd/weights/p50"] for h in logs) > 1  # every token of a boosted rollout carries the mean
    if mode == "direct_sd":
        assert max(h["sgcd/direct_sd/loss"] for h in logs) > 0


def test_sdpo_replaces_reward_advantage_with_teacher_minus_student(tiny_model_path, tmp_path):
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, credit_mode="sdpo", dynamic_sampling=False),
        train_dataset=_dataset(),
    )
    calls = _spy_credit(trainer)
    out = _scored_batch(trainer)
    before, after, rollouts = calls[-1]
    assert after["advantages"].shape == out["completion_ids"].shape
    mixed_rows = {r for g in rollouts.mixed_groups() for r in rollouts.group_rows(g)}
    for i in range(after["advantages"].size(0)):
        if i not in mixed_rows:
            assert (after["advantages"][i] == 0).all()  # no teacher context: no signal
    if mixed_rows:
        assert after["advantages"][sorted(mixed_rows)].abs().sum() > 0


# ---------------------------------------------------------------- provider faults


class _Counter:
    def __init__(self):
        self.calls = 0


@pytest.mark.parametrize("fault", ["raise", "timeout", "garbage", "empty", "half"])
def test_provider_faults_degrade_to_plain_grpo_and_are_counted(tiny_model_path, tmp_path, fault):
    counter = _Counter()

    async def provider(group):
        counter.calls += 1
        if fault == "raise" or (fault == "half" and counter.calls % 2 == 0):
            raise ConnectionError("provider down")
        if fault == "timeout":
            await asyncio.sleep(5)
        if fault == "garbage":
            return {"not": "a reference"}
        if fault == "empty":
            return "   "
        return CreditReference("Deviation points: the first call.")

    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, dynamic_sampling=False, provider_timeout=0.2, max_steps=2),
        train_dataset=_dataset(),
        credit_reference=provider,
    )
    contexts_seen = []
    original_contexts = trainer._teacher_contexts

    def spy_contexts(rollouts):
        contexts = original_contexts(rollouts)
        contexts_seen.append(contexts)
        return contexts

    trainer._teacher_contexts = spy_contexts
    calls = _spy_credit(trainer)
    start = time.perf_counter()
    trainer.train()  # never raises
    assert time.perf_counter() - start < 60
    logs = [h for h in trainer.state.log_history if "sgcd/provider/failures_total" in h]
    total_failures = logs[-1]["sgcd/provider/failures_total"]
    if fault == "half":
        assert 0 < total_failures < counter.calls
    else:
        assert total_failures == counter.calls > 0
    for (before, after, rollouts), contexts in zip(calls, contexts_seen, strict=True):
        for i in range(before.size(0)):
            row = rollouts.local_start + i
            if contexts[rollouts.group_of(row)] is None:  # failed group: W ≡ 1
                adv = after["advantages"][i]
                expected = before[i] if adv.dim() == 0 else before[i].expand_as(adv)
                assert torch.equal(adv, expected)


# ---------------------------------------------------------------- resume


def test_resume_from_checkpoint_continues_with_the_same_state(tiny_model_path, tmp_path):
    common = dict(dynamic_sampling=False, max_steps=4, save_strategy="steps", save_steps=2)
    straight = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path / "a", **common),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    straight.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    assert checkpoint.exists()
    resumed = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path / "b", **common),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert [h["step"] for h in resumed.state.log_history if "sgcd/weights/mean" in h] == [1, 2, 3, 4]
    a, b = _params(straight.model), _params(resumed.model)
    for name in a:  # generation RNG, optimizer and scheduler state are restored: the runs coincide
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_shared_prefix_scoring_matches_full_scoring(tiny_model_path, tmp_path):
    """Scoring the siblings' shared prefix once (KV cache) gives the features of scoring every row in full."""
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, dynamic_sampling=False, credit_batch_size=3, bf16=False),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    captured = []
    original = trainer._score

    def spy(*args, **kwargs):
        result = original(*args)  # the separate student pass: this test compares its features
        captured.append((args, result))
        return result

    trainer._score = spy
    _scored_batch(trainer)
    assert captured, "the batch needs a mixed group"
    args, shared = captured[-1]
    trainer.args.credit_shared_prefix = False
    full = original(*args)
    torch.testing.assert_close(shared.divergence, full.divergence, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(shared.entropy, full.entropy, rtol=1e-4, atol=1e-6)
    assert shared.divergence.abs().sum() > 0
    # The shared path processes each prefix once per unit instead of once per row.
    assert shared.teacher_tokens < full.teacher_tokens
    # The LM head is applied in position chunks from the final hidden states; the model's own logits agree.
    assert trainer._stream_head is True
    trainer._stream_head = False
    unstreamed = original(*args)
    torch.testing.assert_close(unstreamed.divergence, full.divergence, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(unstreamed.entropy, full.entropy, rtol=1e-4, atol=1e-6)


def test_prefetched_references_overlap_generation_and_map_to_their_groups(tiny_model_path, tmp_path):
    """With dynamic sampling, a round's provider calls start before the next round finishes generating."""
    calls = []

    def slow_provider(group):
        calls.append(("call", time.perf_counter()))
        time.sleep(0.3)
        return f"REF for <{group.task_text}>"

    def sparse_reward(prompts, completions, **kwargs):
        # Only prompts with an even flight number can be mixed: rounds often need resampling.
        return [
            float(len(c[0]["content"]) % 2 == 0) if int(p[-1]["content"].split("F")[1].split()[0]) % 2 == 0 else 0.0
            for p, c in zip(prompts, completions, strict=True)
        ]

    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=sparse_reward,
        args=_args(tmp_path, max_resample_rounds=3, max_steps=3, seed=1),
        train_dataset=_dataset(),
        credit_reference=slow_provider,
    )
    rounds_done = []
    original_gather = trainer._gather_rollouts

    def spy_gather():
        rollouts = original_gather()
        rounds_done.append(time.perf_counter())
        return rollouts

    trainer._gather_rollouts = spy_gather
    checked = []
    original_contexts = trainer._teacher_contexts

    def spy_contexts(rollouts):
        contexts = original_contexts(rollouts)
        for g in rollouts.mixed_groups():
            if contexts[g] is not None:
                assert f"<{rollouts.sibling_group(g).task_text}>" in contexts[g].text  # the group's own reference
                checked.append(g)
        return contexts

    trainer._teacher_contexts = spy_contexts
    trainer.train()
    assert checked
    logs = [h for h in trainer.state.log_history if "sgcd/sampling/rounds" in h]
    assert any(h["sgcd/sampling/rounds"] >= 2 for h in logs), "the seed must produce a resampling round"
    # A round finished generating after the first provider call had started: the calls overlapped generation.
    first_call = min(t for _, t in calls)
    assert any(done > first_call for done in rounds_done)


# ---------------------------------------------------------------- student pass fused into TRL's loss forward


@pytest.mark.parametrize("accumulation,dense_head", [(1, True), (2, True), (1, False)])
def test_fused_student_pass_matches_the_separate_pass(
    tiny_model_path, tmp_path, monkeypatch, accumulation, dense_head
):
    """The student side taken from TRL's loss forward gives the divergence, weights and training of a separate pass."""
    if not dense_head:  # gather the K + 1 head rows per position, as for a large vocabulary
        monkeypatch.setattr(scoring_module, "_DENSE_HEAD_FACTOR", 0)
    runs = {}
    for student_pass in ("separate", "fused"):
        trainer = SGCDGRPOTrainer(
            model=tiny_model_path,
            reward_funcs=parity_reward,
            args=_args(
                tmp_path / student_pass,
                dynamic_sampling=False,
                bf16=False,
                student_pass=student_pass,
                segment_baseline="rollout",  # the fused pass forms each micro-batch's weights on its own
                per_device_train_batch_size=8 // accumulation,
                gradient_accumulation_steps=accumulation,
                credit_token_chunk=None if dense_head else 7,  # several logit chunks per row
            ),
            train_dataset=_dataset(),
            credit_reference=fixed_reference,
        )
        assert trainer._fuse_student is (student_pass == "fused")
        weighed, loss_advantages = [], []
        weigh, compute = trainer._weigh, trainer._compute_loss

        def spy_weigh(batch, d, h, mask, any_reference, *groups, weigh=weigh, weighed=weighed):
            weights = weigh(batch, d, h, mask, any_reference, *groups)
            weighed.append((d.clone(), h.clone(), weights.clone()))
            return weights

        def spy_loss(model, inputs, compute=compute, loss_advantages=loss_advantages):
            loss = compute(model, inputs)
            loss_advantages.append(inputs["advantages"].clone())  # what TRL's loss read
            return loss

        trainer._weigh, trainer._compute_loss = spy_weigh, spy_loss
        trainer.train()
        logs = [h for h in trainer.state.log_history if "sgcd/scoring/student_tokens" in h]
        runs[student_pass] = (weighed, loss_advantages, _params(trainer.model), logs)

    (w_sep, adv_sep, p_sep, logs_sep), (w_fused, adv_fused, p_fused, logs_fused) = runs["separate"], runs["fused"]
    assert all(h["sgcd/scoring/student_tokens"] == 0 for h in logs_fused)  # no student forward was run
    assert all(h["sgcd/scoring/student_tokens"] > 0 for h in logs_sep)
    # The separate pass weighs a whole generation batch at once, the fused one each micro-batch: compare per row.
    # (TRL shuffles rows between generation and loss, so rows are matched through the loss-time advantages.)
    sep_d, sep_w = torch.cat([d for d, _, _ in w_sep]), torch.cat([w for _, _, w in w_sep])
    fused_d, fused_w = torch.cat([d for d, _, _ in w_fused]), torch.cat([w for _, _, w in w_fused])
    assert sep_d.shape == fused_d.shape and sep_d.abs().sum() > 0
    order_sep = sorted(range(len(sep_d)), key=lambda i: sep_d[i].sum().item())
    order_fused = sorted(range(len(fused_d)), key=lambda i: fused_d[i].sum().item())
    torch.testing.assert_close(fused_d[order_fused], sep_d[order_sep], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(fused_w[order_fused], sep_w[order_sep], rtol=1e-3, atol=1e-3)
    assert (fused_w > 1).any()
    torch.testing.assert_close(torch.cat(adv_fused).sum(), torch.cat(adv_sep).sum(), rtol=1e-3, atol=1e-5)
    # Adam turns float-level gradient differences on near-zero gradients into visible ones; one step moves ~lr=1e-2.
    for name in p_sep:
        torch.testing.assert_close(p_fused[name], p_sep[name], rtol=1e-3, atol=2e-3)


def test_fused_student_pass_is_refused_where_it_would_not_be_exact(tiny_model_path, tmp_path):
    with pytest.raises(ValueError, match="student_pass='fused' applies to credit_mode"):
        _args(tmp_path, credit_mode="sdpo", student_pass="fused")
    with pytest.raises(ValueError, match="needs segment_baseline='rollout'"):
        _args(tmp_path, student_pass="fused")  # the default segment baseline weighs a rollout against its siblings
    with pytest.raises(ValueError, match="num_iterations=2"):
        SGCDGRPOTrainer(
            model=tiny_model_path,
            reward_funcs=parity_reward,
            args=_args(tmp_path, student_pass="fused", num_iterations=2, segment_baseline="rollout"),
            train_dataset=_dataset(),
        )
    auto = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=_args(tmp_path, num_iterations=2),
        train_dataset=_dataset(),
    )
    assert auto._fuse_student is False  # "auto" falls back to the separate pass
    auto.model.config.attention_dropout = 0.1
    assert "attention_dropout" in _active_dropout(auto.model)


def test_lora_policy_fuses_the_student_pass_unless_its_dropout_is_active(tiny_model_path, tmp_path):
    from peft import LoraConfig

    for dropout, fused in ((0.0, True), (0.05, False)):
        trainer = SGCDGRPOTrainer(
            model=tiny_model_path,
            reward_funcs=parity_reward,
            args=_args(tmp_path / str(dropout), dynamic_sampling=False, bf16=False, segment_baseline="rollout"),
            train_dataset=_dataset(),
            credit_reference=fixed_reference,
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=dropout),
        )
        assert trainer._fuse_student is fused
        adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
        trainer.train()
        logs = [h for h in trainer.state.log_history if "sgcd/weights/mean" in h]
        assert logs and any(h["sgcd/weights/max"] > 1 for h in logs)
        assert all((h["sgcd/scoring/student_tokens"] == 0) is fused for h in logs)
        assert any(not torch.equal(adapter[n], p) for n, p in trainer.model.named_parameters() if n in adapter)
