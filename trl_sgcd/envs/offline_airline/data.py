"""Datasets: GRPO prompts, expert conversations for SFT warm starts, and a text corpus for the tiny tokenizer."""

from __future__ import annotations

import json
from typing import Any

from .domain import POLICY
from .env import TOOL_NAMES, OfflineAirlineEnv
from .tasks import Task, expert_actions, load_task, make_tasks


Message = dict[str, Any]


def tool_schemas() -> list[dict[str, Any]]:
    """The JSON schemas of the tools, in the order TRL renders them for `environment_factory=OfflineAirlineEnv`."""
    from transformers.utils import get_json_schema

    environment = OfflineAirlineEnv()
    return [get_json_schema(getattr(environment, name)) for name in TOOL_NAMES]


def prompt_messages(task: str | Task) -> list[Message]:
    """The conversational prompt of a task: the policy as the system message, the request as the user message."""
    task = load_task(task)
    return [{"role": "system", "content": POLICY}, {"role": "user", "content": task["request"]}]


def make_dataset(split: str = "train", n: int = 256, seed: int = 0, mix: dict[str, float] | None = None):
    """A GRPO dataset of `make_tasks(n, seed, split, mix)` (see `dataset_from_tasks` for the columns)."""
    return dataset_from_tasks(make_tasks(n, seed=seed, split=split, mix=mix))


def dataset_from_tasks(tasks: list[Task]):
    """A GRPO dataset of the given tasks, in order.

    Columns: `prompt` (conversational: system policy + user request), `task` (the task as JSON, read by
    `OfflineAirlineEnv.reset`; it holds gold fields, keep it away from the policy), and `task_id`, `category`, `kind`
    for filtering and evaluation.
    """
    from datasets import Dataset

    tasks = [load_task(task) for task in tasks]
    return Dataset.from_dict(
        {
            "prompt": [prompt_messages(task) for task in tasks],
            "task": [json.dumps(task) for task in tasks],
            "task_id": [task["task_id"] for task in tasks],
            "category": [task["category"] for task in tasks],
            "kind": [task["kind"] for task in tasks],
        }
    )


def expert_conversation(task: str | Task) -> list[Message]:
    """The scripted expert's full conversation for a task, in TRL's tool-calling message format.

    The expert makes one tool call per assistant turn; the observations are produced by running its calls in an
    `OfflineAirlineEnv`, so they are exactly what a policy making the same calls would see.
    """
    task = load_task(task)
    environment = OfflineAirlineEnv()
    messages = prompt_messages(task)
    environment.reset(task=task, prompt=messages)
    for call in expert_actions(task):
        observation = getattr(environment, call["name"])(**call["arguments"])
        function = {"name": call["name"], "arguments": call["arguments"]}
        messages.append(
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": function}]}
        )
        messages.append({"role": "tool", "name": call["name"], "content": observation})
    messages.append({"role": "assistant", "content": task["expert_answer"]})
    return messages


def make_sft_dataset(split: str = "train", n: int = 256, seed: int = 0, mix: dict[str, float] | None = None):
    """An SFT dataset of expert conversations, for `trl.SFTTrainer` (warm start before GRPO/SGCD).

    Columns: `messages` and `tools` (what `SFTTrainer` reads for tool-calling data), plus `task_id`, `category`,
    `kind`. `messages` and `tools` use the `datasets.Json` feature: with plain struct columns, Arrow would merge the
    argument dicts of different tools and fill the missing keys with nulls, which the chat template would render.
    Train with `SFTConfig(assistant_only_loss=True)`: TRL then uses the training chat template, which renders every
    assistant turn the way GRPO generation sees it.
    """
    from datasets import Dataset, Features, Json, List, Value

    tasks = make_tasks(n, seed=seed, split=split, mix=mix)
    schemas = tool_schemas()
    features = Features(
        {
            "messages": List(Json()),
            "tools": List(Json()),
            "task_id": Value("string"),
            "category": Value("string"),
            "kind": Value("string"),
        }
    )
    return Dataset.from_dict(
        {
            "messages": [expert_conversation(task) for task in tasks],
            "tools": [schemas] * len(tasks),
            "task_id": [task["task_id"] for task in tasks],
            "category": [task["category"] for task in tasks],
            "kind": [task["kind"] for task in tasks],
        },
        features=features,
    )


def corpus_texts(n: int = 256, seed: int = 0, split: str = "train") -> list[str]:
    """Text for training a tiny tokenizer (`make_tiny_model(..., texts=corpus_texts())`).

    For `n` tasks: the policy and each tool schema as the chat template writes them (once per task, as often as they
    occur in training sequences, so BPE learns their merges), the request, each expert tool call
    (`{"name": ..., "arguments": ...}`), each observation and the final answer.
    """
    header = [POLICY] + [json.dumps(schema, ensure_ascii=False) for schema in tool_schemas()]
    texts = []
    for task in make_tasks(n, seed=seed, split=split):
        texts += header
        for message in expert_conversation(task)[1:]:
            for call in message.get("tool_calls") or []:
                texts.append(json.dumps(call["function"], ensure_ascii=False))
            if message["content"]:
                texts.append(message["content"])
    return texts
