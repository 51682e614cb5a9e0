"""TRL's GRPO set-ups with the class swapped: each configuration of TRL's own GRPO test suite listed below trains with
`SGCDGRPOTrainer`/`SGCDConfig` (default SGCD settings) under TRL's assertions (the loss is logged, every trainable
parameter moves; with PEFT, the adapter moves). The same cases with `GRPOTrainer`/`GRPOConfig` are marked `slow`: they
check that the harness asks only what TRL's own trainer does."""

import pytest
import torch
from datasets import Dataset, IterableDataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer


@pytest.fixture(scope="module")
def reward_model_path(tiny_model_path, tmp_path_factory):
    """A random-weight sequence classifier on the tiny model's tokenizer (stands in for TRL's hub reward model)."""
    path = str(tmp_path_factory.mktemp("tiny-rm"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _prompts(conversational: bool, n: int = 4) -> Dataset:
    words = ["The sun", "Beautiful is better than", "Explicit is", "Simple is better", "Flat is", "Sparse is"][:n]
    if conversational:
        return Dataset.from_list([{"prompt": [{"role": "user", "content": w}]} for w in words])
    return Dataset.from_list([{"prompt": w} for w in words])


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def unique_letters_reward(completions, **kwargs):
    return [float(len(set(c))) for c in completions]


async def async_unique_letters_reward(completions, **kwargs):
    return [float(len(set(c))) for c in completions]


def none_reward(completions, **kwargs):
    return [None] * len(completions)


def conversational_reward(completions, **kwargs):
    return [float(len(c[0]["content"])) for c in completions]


def column_reward(completions, some_values, **kwargs):
    return [float(abs(len(c) - v)) for c, v in zip(completions, some_values, strict=True)]


_BASE = dict(
    learning_rate=0.1,
    per_device_train_batch_size=3,
    num_generations=3,
    max_completion_length=8,
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    save_strategy="no",
    num_train_epochs=1,
    logging_steps=1,
)
_EVAL = {"per_device_eval_batch_size": 3, "eval_strategy": "steps", "eval_steps": 2}
RM = "reward_model"
# (name, conversational, config overrides, reward functions, extras)
CASES = [
    ("standard", False, {}, RM, {}),
    ("conversational", True, {}, RM, {}),
    *[
        (f"loss_{t}", False, {"loss_type": t, "gradient_accumulation_steps": 2, "max_completion_length": 32}, RM, {})
        for t in ("bnpo", "dr_grpo", "dapo", "cispo", "sapo")
    ],
    ("eval", False, _EVAL, RM, {"eval": True}),
    ("eval_on_start", False, _EVAL | {"eval_on_start": True, "loss_type": "grpo"}, RM, {"eval": True}),
    ("num_iterations", False, {"num_iterations": 2}, RM, {}),
    ("peft_config", False, {}, RM, {"peft": "config"}),
    ("peft_model", False, {}, RM, {"peft": "model"}),
    ("peft_checkpointing", False, {"gradient_checkpointing": True}, RM, {"peft": "config"}),
    ("reward_func", False, {}, [length_reward], {}),
    ("reward_func_conversational", True, {}, [conversational_reward], {}),
    ("reward_funcs", False, {}, [length_reward, unique_letters_reward], {}),
    ("async_reward_func", False, {}, [length_reward, async_unique_letters_reward], {}),
    ("reward_func_none", False, {}, [length_reward, none_reward], {}),
    ("reward_weights", False, {"reward_weights": [0.7, 0.3]}, [length_reward, unique_letters_reward], {}),
    ("reward_func_and_model", False, {}, [length_reward, RM], {}),
    ("reward_column", False, {}, [column_reward], {"column": True}),
    ("sync_ref_model", False, {"beta": 0.1, "sync_ref_model": True, "ref_model_sync_steps": 2}, RM, {}),
    ("beta", False, {"beta": 0.1}, RM, {}),
    ("off_policy_mask", False, {"off_policy_mask_threshold": 0.5}, RM, {}),
    ("bias_correction_kl", False, {"beta": 0.1, "use_bias_correction_kl": True}, RM, {}),
    ("entropy_filter", False, {"top_entropy_quantile": 0.2}, RM, {}),
    ("generation_kwargs", False, {"top_p": 0.9, "top_k": 10, "min_p": 0.01, "repetition_penalty": 1.1}, RM, {}),
    (
        "normalize_then_sum",
        False,
        {"multi_objective_aggregation": "normalize_then_sum"},
        [length_reward, unique_letters_reward],
        {},
    ),
    *[(f"scale_rewards_{s}", False, {"scale_rewards": s}, RM, {}) for s in (False, "group", "batch", True, "none")],
    # The two set-ups SGCDConfig used to refuse.
    ("gspo", False, {"importance_sampling_level": "sequence", "loss_type": "grpo", "steps_per_generation": 2}, RM, {}),
    ("luspo", False, {"importance_sampling_level": "sequence", "loss_type": "luspo", "num_iterations": 2}, RM, {}),
    ("iterable_dataset", False, {"max_steps": 3}, RM, {"iterable": True}),
]


@pytest.mark.parametrize("trainer_kind", [pytest.param("grpo", marks=pytest.mark.slow), "sgcd"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trl_setup_trains(case, trainer_kind, tiny_model_path, reward_model_path, tmp_path):
    name, conversational, overrides, rewards, extra = case
    if trainer_kind == "grpo":
        config_class, trainer_class, sgcd_overrides = GRPOConfig, GRPOTrainer, {}
    else:
        # The reward model scores around 0: a threshold of 0 makes mixed groups, so the credit path runs too.
        config_class, trainer_class = SGCDConfig, SGCDGRPOTrainer
        sgcd_overrides = {"success_threshold": 0.0} if rewards == RM else {}
    args = config_class(output_dir=str(tmp_path), **(_BASE | overrides | sgcd_overrides))
    rewards = reward_model_path if rewards == RM else [reward_model_path if r == RM else r for r in rewards]
    dataset = _prompts(conversational)
    if extra.get("column"):
        dataset = dataset.add_column("some_values", list(range(len(dataset))))
    if extra.get("iterable"):
        rows = list(dataset)
        dataset = IterableDataset.from_generator(lambda: iter(rows))
    model, kwargs = tiny_model_path, {}
    if extra.get("peft"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype="float32")
        if extra["peft"] == "model":
            model = get_peft_model(model, LoraConfig())
        else:
            kwargs["peft_config"] = LoraConfig()
    if extra.get("eval"):
        kwargs["eval_dataset"] = _prompts(conversational, n=2)
    trainer = trainer_class(model=model, reward_funcs=rewards, args=args, train_dataset=dataset, **kwargs)
    before = {n: p.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()

    assert trainer.state.log_history[-1]["train_loss"] is not None
    changed = [n for n, p in before.items() if not torch.equal(p, trainer.model.get_parameter(n))]
    if extra.get("peft"):
        assert any("lora" in n for n in changed)
    else:
        assert sorted(changed) == sorted(before)
    if trainer_kind == "sgcd":
        logs = trainer.state.log_history
        assert any("sgcd/groups/mixed_frac" in h for h in logs)
        weights_max = max((h.get("sgcd/weights/max", 0.0) for h in logs), default=0.0)
        if name in ("gspo", "luspo", "iterable_dataset"):
            assert weights_max > 1.0  # the credit reached TRL's loss in the set-ups that used to be refused
