"""The reward (τ-bench's DB-hash and communicate checks) and the deviation ground truth for credit precision."""

from __future__ import annotations

import json
import re
from typing import Any

from .env import Episode, OfflineAirlineEnv, ToolCallRecord, canonical_call, is_read
from .tasks import Task, expert_actions, gold_db_hash, load_task


Message = dict[str, Any]


def final_answer(completion: list[Message] | str) -> str | None:
    """The text of the rollout's final assistant message, or None when the rollout did not end with one.

    A rollout that stops on a tool call (TRL's `max_tool_calling_iterations` or the completion budget ran out) has no
    final answer and scores 0, like τ-bench's premature termination. A leftover thinking block is dropped.
    """
    if isinstance(completion, str):
        content = completion
    else:
        if not completion or completion[-1].get("role") != "assistant" or completion[-1].get("tool_calls"):
            return None
        content = completion[-1].get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    content = content.split("</think>")[-1].strip()
    return content or None


def mentions(text: str, fact: str) -> bool:
    """Whether `text` contains `fact` as a whole token sequence, case-insensitively (`"r12"` is not in `"r120"`)."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(fact)}(?![A-Za-z0-9])", text, flags=re.IGNORECASE) is not None


def score_answer(environment: OfflineAirlineEnv, answer: str | None) -> float:
    """Scores a finished rollout and records the outcome in `environment.episode`.

    The reward is 1.0 iff the rollout gave a final answer, the database ends in the gold state (hash of the expert's
    end state), no tool call was refused by a policy rule, and the answer mentions every required fact; else 0.0.

    Args:
        environment: the rollout's environment, after its tool calls.
        answer: the final assistant text (see `final_answer`), or None if there was none.
    """
    task, episode = environment.task, environment.episode
    if task is None or episode is None:
        raise ValueError("score_answer needs an environment that was reset with a task.")
    episode.final_answer = answer
    episode.db_match = environment.db_hash == gold_db_hash(task)
    episode.missing_facts = [fact for fact in task["required_facts"] if answer is None or not mentions(answer, fact)]
    success = answer is not None and episode.db_match and not episode.violations and not episode.missing_facts
    episode.reward = 1.0 if success else 0.0
    return episode.reward


def offline_airline_reward(
    completions: list[list[Message]], environments: list[Any] | None = None, **kwargs: Any
) -> list[float | None]:
    """TRL reward function for `OfflineAirlineEnv` rollouts: 1.0 for a solved task, else 0.0.

    TRL calls it with the rollouts' messages and, with `environment_factory`, the rollouts' environments. Each rollout
    is scored with `score_answer`, which also fills in `environment.episode` (final answer, database match, missing
    facts, reward) for evaluation and tool-use audits. Rows whose environment is not an `OfflineAirlineEnv` get None
    (unscored), so it can be mixed with other environments.

    Args:
        completions: per rollout, the generated messages (assistant turns, tool calls and tool results).
        environments: per rollout, its environment instance (passed by TRL).
        **kwargs: the other reward-function arguments TRL passes (dataset columns, trainer state...), unused.
    """
    if environments is None:
        raise ValueError(
            "offline_airline_reward needs the rollouts' environments: use environment_factory=OfflineAirlineEnv."
        )
    return [
        score_answer(environment, final_answer(completion)) if isinstance(environment, OfflineAirlineEnv) else None
        for completion, environment in zip(completions, environments, strict=True)
    ]


def completion_tool_calls(completion: list[Message]) -> list[dict[str, Any]]:
    """The tool calls of a rollout's messages, in order, as `{"name": ..., "arguments": {...}}` dicts."""
    calls = []
    for message in completion:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                function = call.get("function", call)
                calls.append({"name": function.get("name"), "arguments": function.get("arguments")})
    return calls


def _call_key(call: dict[str, Any] | ToolCallRecord) -> tuple | None:
    if isinstance(call, ToolCallRecord):
        name, arguments = call.name, call.arguments
    else:
        function = call.get("function", call)
        name, arguments = function.get("name"), function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return canonical_call(name, arguments) if isinstance(name, str) else None


def first_deviation(task: str | Task, tool_calls: list[dict[str, Any]] | list[ToolCallRecord] | Episode) -> int | None:
    """Index of the first tool call where a rollout leaves the expert's path, or None if it never does.

    The expert's path allows some freedom: its reads may come in any order and may be repeated, but each of its
    writes must come in order, with exactly the expert's arguments, and only after every read the expert made before
    that write. Arguments are compared after the tools' normalisation (`"f7"` equals `"F7"`, `"2"` equals `2`). So
    a call is a deviation when it is a read the expert never made (a wrong id, a bad call), a write other than the
    expert's next one, or a write made before looking up what the expert looked up. A rollout that makes only on-path
    calls but stops before finishing the path deviates at `len(tool_calls)`: its final answer came too early.

    This is about the expert's path, not about the reward: a rollout that succeeds another way (a zero-tool refusal of
    a no-action task, a write without the preceding read) still has a deviation index. Use it on failed rollouts; a
    failed rollout without a deviation went wrong in its final answer (a missing fact).

    Args:
        task: the task (dict or JSON string).
        tool_calls: the rollout's calls in order: `{"name", "arguments"}` dicts, TRL's `{"type": "function",
            "function": {...}}` dicts (see `completion_tool_calls`), `ToolCallRecord`s, or an `Episode`.
    """
    if isinstance(tool_calls, Episode):
        tool_calls = tool_calls.tool_calls
    expert = [_call_key(call) for call in expert_actions(load_task(task))]
    expert_reads = {call for call in expert if is_read(call[0])}
    writes = [(position, call) for position, call in enumerate(expert) if not is_read(call[0])]
    done_reads, next_write = set(), 0
    for index, call in enumerate(tool_calls):
        key = _call_key(call)
        if key in expert_reads:
            done_reads.add(key)
            continue
        if next_write < len(writes):
            position, write = writes[next_write]
            needed = {read for read in expert[:position] if is_read(read[0])}
            if key == write and needed <= done_reads:
                next_write += 1
                continue
        return index
    if next_write < len(writes) or not expert_reads <= done_reads:
        return len(tool_calls)
    return None
