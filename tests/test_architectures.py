"""Every architecture family trains with the default config: credit on, dynamic sampling, shared-prefix scoring and
the automatic student pass; also with LoRA and with gradient checkpointing."""

import pytest
import torch
from datasets import Dataset

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.tiny_model import TINY_ARCHS, build_tokenizer, make_tiny_model


FAMILIES = list(TINY_ARCHS)
UNSHAREABLE = {"jamba"}  # its Mamba-1 multi-token forward ignores a cached state: scored unshared, with a warning


def tiny_args(tmp_path, **overrides) -> SGCDConfig:
    """The default SGCD config at a one-step tiny scale (also used by `test_processor_models.py`)."""
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=3,
        divergence_top_k=16,
        segment_spike_z=1.0,
        segment_min_divergence=1e-7,  # random tiny models: teacher and student differ little
        segment_baseline="rollout",  # the per-rollout rule keeps the student pass fused into each family's loss
    )
    return SGCDConfig(**(values | overrides))


def parity_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def fixed_reference(group):
    return "State checks: verify the user first. Failed branches: answering without a lookup."


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(vocab_size=300)


@pytest.fixture(scope="module")
def model_paths(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: make_tiny_model(root / arch, arch=arch, tokenizer=tokenizer) for arch in FAMILIES}


def _train(path, tmp_path, **overrides):
    """One default-config step; returns the trainer, the `_score` calls, `(A, W)` per weighing and the loss's
    advantages."""
    args = tiny_args(tmp_path, **overrides.pop("args", {}))
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"book flight F{i}"}]} for i in range(16)])
    trainer = SGCDGRPOTrainer(
        model=path,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=dataset,
        credit_reference=fixed_reference,
        **overrides,
    )
    scored, weighed, loss_advantages = [], [], []
    score, weigh, compute = trainer._score, trainer._weigh, trainer._compute_loss

    def spy_score(*a, **kw):
        result = score(*a, **kw)
        trainer.args.credit_shared_prefix = False  # the same rows scored unshared, with the same weights
        scored.append((result, score(*a, **kw)))
        trainer.args.credit_shared_prefix = True
        return result

    def spy_weigh(batch, *a, **kw):
        before = batch["advantages"].clone()
        weights = weigh(batch, *a, **kw)
        weighed.append((before, weights.clone()))
        return weights

    def spy_loss(model, inputs):
        loss = compute(model, inputs)
        loss_advantages.append(inputs["advantages"].clone())  # what TRL's loss read
        return loss

    trainer._score, trainer._weigh, trainer._compute_loss = spy_score, spy_weigh, spy_loss
    trainer.train()
    return trainer, score, scored, weighed, loss_advantages


def _check(trainer, score, scored, weighed, loss_advantages, arch):
    assert trainer.state.global_step == 1
    assert trainer._fuse_student and trainer._stream_head  # the automatic student pass is fused into TRL's loss
    # Credit weights above 1 reach TRL's loss: it reads A·W.
    assert scored and weighed and loss_advantages
    a = torch.cat([before for before, _ in weighed])
    w = torch.cat([weights for _, weights in weighed])
    assert ((w > 1) & (a != 0).unsqueeze(1)).any()
    expected, read = (a.unsqueeze(1) * w).flatten().sort().values, torch.cat(loss_advantages).flatten().sort().values
    torch.testing.assert_close(read, expected)
    # Shared-prefix scoring (kept on every family but Jamba) gives the unshared teacher features.
    assert trainer._share_prefix is (arch not in UNSHAREABLE)
    shared, full = scored[-1]
    assert shared.tensors().keys() == full.tensors().keys()
    for key, value in shared.tensors().items():
        torch.testing.assert_close(value, full.tensors()[key], rtol=1e-5, atol=1e-5, msg=f"{arch}: {key}")
    if trainer._share_prefix:
        assert shared.teacher_tokens < full.teacher_tokens


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_trains_with_the_default_config(arch, model_paths, tmp_path):
    _check(*_train(model_paths[arch], tmp_path), arch)


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_trains_with_lora(arch, model_paths, tmp_path):
    from peft import LoraConfig

    trainer, *rest = _train(
        model_paths[arch], tmp_path, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    _check(trainer, *rest, arch)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_trains_with_gradient_checkpointing(arch, model_paths, tmp_path):
    trainer, *rest = _train(model_paths[arch], tmp_path, args={"gradient_checkpointing": True})
    _check(trainer, *rest, arch)
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.is_gradient_checkpointing  # scoring left it on
    # Scoring does not toggle checkpointing, which would add an input-gradient hook on every step.
    hooks = len(model.get_input_embeddings()._forward_hooks)
    with trainer._scoring_mode():
        assert model.is_gradient_checkpointing and not model.training  # checkpointed layers run plainly in eval
    assert len(model.get_input_embeddings()._forward_hooks) == hooks and model.training


def test_an_unknown_cache_falls_back_to_unshared_scoring_with_one_warning(model_paths, tmp_path, caplog):
    from transformers.cache_utils import StaticCache

    from trl_sgcd.prefix_cache import UnsupportedCacheError, repeat_prefix_cache

    with pytest.raises(UnsupportedCacheError, match="StaticLayer"):
        repeat_prefix_cache(StaticCache(config=tiny_config_of(model_paths["qwen3"]), max_cache_len=8), 2)
    with caplog.at_level("WARNING"):
        trainer, score, scored, weighed, loss_advantages = _train(
            model_paths["jamba"], tmp_path, args={"max_steps": 3}
        )
    assert len(scored) == 3  # three scoring passes, one warning
    assert sum("Shared-prefix scoring is off" in r.message for r in caplog.records) == 1
    assert trainer._share_prefix is False and all(s.teacher_tokens == f.teacher_tokens for s, f in scored)


def tiny_config_of(path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)
