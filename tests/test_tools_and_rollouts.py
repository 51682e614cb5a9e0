"""SGCD with multi-turn tool use (`environment_factory`) and with a custom `rollout_func` (`env_mask`).

A random tiny model never emits a tool call by itself, so `ScriptedToolTrainer` replaces the *first* turn of each
rollout by a scripted tool call; TRL's own tool loop then executes it, appends the tool result and lets the model
continue. Everything after the first turn (tool execution, tool mask, teacher pass, credit) is the real code path.
"""

import json

import pytest
import torch
from datasets import Dataset
from test_trainer import _args, _spy_weights

from trl_sgcd import SGCDGRPOTrainer
from trl_sgcd.credit.precision import credit_precision_metrics


MARKER = "REFERENCE-MARKER-7f3a"


class LookupEnv:
    def reset(self, **row):
        self.calls = 0

    def lookup_flight(self, code: str) -> str:
        """Looks up the status of a flight.

        Args:
            code: The flight code, for example F1.

        Returns:
            The flight status.
        """
        self.calls += 1
        return f"flight {code} is delayed by two hours"


class ScriptedToolTrainer(SGCDGRPOTrainer):
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )
        tok = self.processing_class
        response_id = tok.convert_tokens_to_ids("<tool_response>")
        script = tok.encode(
            '<tool_call>\n{"name": "lookup_flight", "arguments": {"code": "F1"}}\n</tool_call><|im_end|>',
            add_special_tokens=False,
        )
        completion_ids = [c if response_id in p else script for p, c in zip(prompt_ids, completion_ids, strict=True)]
        return completion_ids, logprobs


def final_answer_parity(completions, **kwargs):
    return [float(len(c[-1]["content"] or "") % 2 == 0) for c in completions]


def _dataset(n=8):
    return Dataset.from_list(
        [
            {
                "prompt": [
                    {"role": "system", "content": "You are an airline agent."},
                    {"role": "user", "content": f"Is flight F{i} on time?"},
                ]
            }
            for i in range(n)
        ]
    )


def test_environment_factory_rollouts_get_credit_only_on_assistant_tokens(tiny_model_path, tmp_path):
    trainer = ScriptedToolTrainer(
        model=tiny_model_path,
        reward_funcs=final_answer_parity,
        args=_args(
            tmp_path,
            max_completion_length=96,
            max_tool_calling_iterations=2,
            dynamic_sampling=False,
            segment_min_divergence=0.0,
        ),
        train_dataset=_dataset(),
        environment_factory=LookupEnv,
        credit_reference=lambda group: f"{MARKER}: successes check the flight status before answering.",
    )
    teacher_prompts = []
    original_tokenize = trainer._tokenize_prompts

    def spy_tokenize(prompts):
        result = original_tokenize(prompts)
        if any(MARKER in str(p) for p in prompts):
            teacher_prompts.extend(trainer.processing_class.decode(ids) for ids in result[0])
        return result

    trainer._tokenize_prompts = spy_tokenize
    calls = _spy_weights(trainer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())

    saw_tool_tokens = saw_credit = False
    for seq_adv, out in calls:
        assert "tool_mask" in out
        tool_tokens = (out["tool_mask"] == 0) & (out["completion_mask"] == 1)
        w = torch.where(seq_adv.unsqueeze(1) != 0, out["advantages"] / seq_adv.unsqueeze(1), torch.ones(1))
        assert torch.all(w[tool_tokens] == 1)  # tool observations never get credit
        saw_tool_tokens |= bool(tool_tokens.any())
        saw_credit |= bool((w > 1).any())
        # The student side never contains the reference.
        tok = trainer.processing_class
        assert all(MARKER not in tok.decode(ids) for ids in out["prompt_ids"])
        assert all(MARKER not in tok.decode(ids) for ids in out["completion_ids"])
    assert saw_tool_tokens and saw_credit
    assert teacher_prompts, "the teacher pass must have run"
    # The teacher prompt is rendered by TRL with the same tool schema and training template as the student's.
    assert all("lookup_flight" in p and MARKER in p for p in teacher_prompts)
    assert all(p.rstrip().endswith("<|im_start|>assistant") for p in teacher_prompts)
    logs = [h for h in trainer.state.log_history if "sgcd/tools/tool_calls_per_rollout" in h]
    assert logs and all(h["sgcd/tools/tool_calls_per_rollout"] >= 1 for h in logs)


def _rollout_func(prompts, trainer):
    """Owns the loop: 4 assistant tokens, 4 environment tokens (env_mask 0), 4 assistant tokens."""
    tok = trainer.processing_class
    generator = torch.Generator().manual_seed(len(trainer.state.log_history))
    prompt_ids, completion_ids, env_mask = [], [], []
    for prompt in prompts:
        prompt_ids.append(
            tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
        ids = torch.randint(20, 600, (12,), generator=generator).tolist()
        completion_ids.append(ids)
        env_mask.append([1] * 4 + [0] * 4 + [1] * 4)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": env_mask}


def test_rollout_func_env_mask_is_respected_by_the_credit_mask(tiny_model_path, tmp_path):
    def reward(completion_ids, **kwargs):
        return [float(sum(ids) % 2) for ids in completion_ids]

    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=reward,
        args=_args(tmp_path, max_completion_length=12, dynamic_sampling=False, segment_min_divergence=0.0),
        train_dataset=_dataset(),
        rollout_func=_rollout_func,
        credit_reference=lambda group: "Deviation points: the first tokens.",
    )
    calls = _spy_weights(trainer)
    trainer.train()
    saw_credit = False
    for seq_adv, out in calls:
        assert torch.equal(out["tool_mask"][:, 4:8], torch.zeros_like(out["tool_mask"][:, 4:8]))
        w = torch.where(seq_adv.unsqueeze(1) != 0, out["advantages"] / seq_adv.unsqueeze(1), torch.ones(1))
        assert torch.all(w[:, 4:8] == 1)
        saw_credit |= bool((w[:, :4] > 1).any() or (w[:, 8:] > 1).any())
    assert saw_credit


def test_expert_action_column_logs_credit_precision(tiny_model_path, tmp_path):
    expert = json.dumps([{"name": "lookup_flight", "arguments": {"code": "F9"}}])  # the scripted F1 call deviates
    trainer = ScriptedToolTrainer(
        model=tiny_model_path,
        reward_funcs=final_answer_parity,
        args=_args(
            tmp_path,
            max_completion_length=96,
            max_tool_calling_iterations=2,
            dynamic_sampling=False,
            segment_min_divergence=0.0,
            credit_log_steps=1,
        ),
        train_dataset=_dataset().add_column("expert_action", [expert] * 8),
        environment_factory=LookupEnv,
        credit_reference=lambda group: "Successes check the flight status before answering.",
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "sgcd/credit/precision" in h]
    assert logs
    for h in logs:
        assert 0 <= h["sgcd/credit/precision"] <= 1 and 0 < h["sgcd/credit/deviation_share"] <= 1
        assert h["sgcd/credit/rollouts"] >= 1
    # The logged figures are `credit_precision_metrics` of the dumped rows of the same step.
    dumps = sorted((tmp_path / "out" / "sgcd_credit").glob("step_*.jsonl"))
    by_step = {}
    for path in dumps:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        rows = [
            {**r, "expert_action": r["metadata"]["expert_action"], "credit_mask": r["credit_mask"]} for r in records
        ]
        by_step[records[0]["step"]] = credit_precision_metrics(rows)
    measured = [m for m in by_step.values() if m]
    assert measured
    logged = sorted(h["sgcd/credit/lift"] for h in logs)
    assert sorted(m["lift"] for m in measured) == pytest.approx(logged, rel=1e-5)
