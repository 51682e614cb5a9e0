"""The evaluation loop: episodes of an `environment_factory` environment driven by a `Policy`, scored like training.

The conventions are TRL's (`GRPOTrainer` with `environment_factory`), so a checkpoint is evaluated under the protocol
it was trained with: one fresh environment per episode; `reset(**row)` gets the whole dataset row and any text it
returns is appended to the prompt's last message; every public method of the environment except `reset` and
`get_reward` is a tool, rendered from `transformers.utils.get_json_schema`; tool calls run in order, an exception
becomes a `{"error": ...}` result, and results go back as `{"role": "tool", "name": ..., "content": str(result)}`; the
loop stops at the first assistant message without tool calls, after `max_tool_calling_iterations` rounds of tool
execution, or when the token budget runs out (the tool results that overflow it are dropped, as TRL does). Rewards
come from TRL-signature reward functions (`prompts`, `completions`, `completion_ids`, the dataset columns,
`environments`, ...) plus the environment's own `get_reward()` when it defines one, summed with weights; `None`
values are ignored, and an episode no source scored gets a NaN reward (never a success).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .metrics import EnvironmentMetrics
from .policies import Conversation, Policy
from .results import EpisodeRecord, EvalResult, summarize


logger = logging.getLogger(__name__)

Message = dict[str, Any]


def environment_tools(environment: Any) -> dict[str, Callable[..., Any]]:
    """The tools of an environment instance as TRL exposes them: its public methods except `reset` and `get_reward`.

    Listed on the class (so properties are not evaluated), in name order, bound to the instance.
    """
    return {
        name: getattr(environment, name)
        for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    }


def tool_schemas(tools: Mapping[str, Callable[..., Any]]) -> list[dict[str, Any]]:
    """The JSON schemas of `tools`, from their signatures and docstrings (`transformers.utils.get_json_schema`)."""
    from transformers.utils import get_json_schema

    return [get_json_schema(tool) for tool in tools.values()]


def _run_tool(tools: Mapping[str, Callable[..., Any]], call: dict[str, Any]) -> tuple[str, Any, bool]:
    """Executes one tool call; returns `(name, result, failed)`. Never raises: failures become `{"error": ...}`."""
    if call.get("type", "function") != "function":
        return call.get("name", "unknown"), {"error": f"Unsupported tool call type: {call.get('type')}"}, True
    function = call.get("function", call)
    name, arguments = function.get("name"), function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            return name, {"error": f"The arguments are not valid JSON: {error}"}, True
    try:
        if name not in tools:
            raise ValueError(f"Tool {name} not found.")
        if not isinstance(arguments, dict):
            raise ValueError("Tool arguments must be a JSON object.")
        result = tools[name](**arguments)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except Exception as error:
        return name, {"error": str(error)}, True
    return name, result, False


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _truncate(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    note = f"\n... [{len(text) - limit} more characters truncated]"
    return text[:limit] + note


class _Episode:
    def __init__(self, row: dict[str, Any], task: str, trial: int, environment: Any, conversation: Conversation):
        self.row = row
        self.task = task
        self.trial = trial
        self.environment = environment
        self.tools = environment_tools(environment)
        self.conversation = conversation
        self.num_tool_calls = 0
        self.num_tool_errors = 0
        self.stop: str | None = None


def _start_episode(
    row: Mapping[str, Any],
    task: str,
    trial: int,
    environment_factory: Callable[[], Any],
    schema_cache: dict[type, list[dict[str, Any]]],
) -> _Episode:
    row = dict(row)
    environment = environment_factory()
    prompt = copy.deepcopy(row.get("prompt", [{"role": "user", "content": ""}]))
    if isinstance(prompt, str):
        raise ValueError("The evaluation loop needs conversational prompts (lists of chat messages), got a string.")
    observation = environment.reset(**row)
    if observation is not None:
        content = prompt[-1]["content"]
        if isinstance(observation, list) or isinstance(content, list):
            raise ValueError("Multimodal prompts and reset observations are not supported by the evaluation loop.")
        prompt[-1] = {**prompt[-1], "content": content + observation}
    kind = type(environment)
    if kind not in schema_cache:
        schema_cache[kind] = tool_schemas(environment_tools(environment))
    conversation = Conversation(messages=prompt, tools=schema_cache[kind], num_prompt_messages=len(prompt))
    return _Episode(row, task, trial, environment, conversation)


def _run_batch(
    policy: Policy,
    episodes: list[_Episode],
    max_tool_calling_iterations: int | None,
    max_observation_chars: int | None,
) -> None:
    """Runs the episodes in lockstep (one policy call per round for every unfinished episode), as TRL's loop does."""
    active = list(episodes)
    iteration = 0
    while active:
        replies = policy.respond([episode.conversation for episode in active])
        still_active = []
        for episode, reply in zip(active, replies, strict=True):
            conversation = episode.conversation
            if reply is None:
                if conversation.error is not None:
                    episode.stop = "error"
                else:
                    episode.stop = "length"
                    # TRL rolls back tool results that do not fit the budget: the episode ends on its tool call.
                    while conversation.completion and conversation.messages[-1]["role"] == "tool":
                        conversation.messages.pop()
                continue
            conversation.messages.append(reply)
            calls = reply.get("tool_calls") or []
            if not calls:
                episode.stop = "answer"
                continue
            if max_tool_calling_iterations is not None and iteration >= max_tool_calling_iterations:
                episode.stop = "max_tool_calls"
                continue
            for call in calls:
                name, result, failed = _run_tool(episode.tools, call)
                episode.num_tool_calls += 1
                episode.num_tool_errors += failed
                content = result if isinstance(result, list) else _truncate(str(result), max_observation_chars)
                message = {"role": "tool", "name": name, "content": content}
                if call.get("id") is not None:
                    message["tool_call_id"] = call["id"]
                conversation.messages.append(message)
            still_active.append(episode)
        active = still_active
        iteration += 1


def _reward_sources(
    reward_funcs: Callable | Sequence[Callable] | None,
    reward_weights: Sequence[float] | None,
    environment: Any,
) -> list[tuple[Callable, float]]:
    funcs = [] if reward_funcs is None else [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    weights = [1.0] * len(funcs) if reward_weights is None else [float(w) for w in reward_weights]
    if len(weights) != len(funcs):
        raise ValueError(f"Got {len(weights)} reward weights for {len(funcs)} reward functions.")
    sources = list(zip(funcs, weights, strict=True))
    env_type = type(environment)
    if callable(getattr(env_type, "get_reward", None)):
        # As in TRL: the environment's own reward is one more source (weight 1), scored only for its exact class.
        def get_reward(environments, **kwargs):
            return [e.get_reward() if type(e) is env_type else None for e in environments]

        sources.append((get_reward, 1.0))
    if not sources:
        raise ValueError("No reward source: pass `reward_funcs`, or use an environment that defines `get_reward`.")
    return sources


def _score(episodes: list[_Episode], sources: list[tuple[Callable, float]], policy: Policy) -> list[float]:
    columns = [key for key in episodes[0].row if key not in ("prompt", "completion", "completion_ids")]
    kwargs: dict[str, Any] = {key: [episode.row.get(key) for episode in episodes] for key in columns}
    kwargs.update(
        trainer_state=None,
        log_extra=lambda *args, **kw: None,
        log_metric=lambda *args, **kw: None,
        environments=[episode.environment for episode in episodes],
    )
    completion_ids = getattr(policy, "completion_ids", None)
    prompts = [episode.conversation.prompt for episode in episodes]
    completions = [episode.conversation.completion for episode in episodes]
    ids = [completion_ids(e.conversation) if completion_ids else [] for e in episodes]
    totals = [math.nan] * len(episodes)
    for func, weight in sources:
        values = func(prompts=prompts, completions=completions, completion_ids=ids, **kwargs)
        if inspect.isawaitable(values):
            values = asyncio.run(_await(values))
        values = list(values)
        if len(values) != len(episodes):
            raise ValueError(f"A reward function returned {len(values)} rewards for {len(episodes)} episodes.")
        for i, value in enumerate(values):
            if value is not None and not math.isnan(float(value)):
                totals[i] = (0.0 if math.isnan(totals[i]) else totals[i]) + weight * float(value)
    return totals


def _episode_info(environment: Any) -> dict[str, Any]:
    """What an environment recorded about its episode, JSON-friendly (offline `episode`, AppWorld `last_result`...)."""
    for attribute in ("episode", "last_result", "reward_info"):
        value = getattr(environment, attribute, None)
        if value is None:
            continue
        if hasattr(value, "to_dict"):
            return dict(value.to_dict())
        if hasattr(value, "model_dump"):
            return dict(value.model_dump(mode="json"))
        if isinstance(value, Mapping):
            return dict(value)
    return {}


def evaluate(
    policy: Policy,
    environment_factory: Callable[[], Any],
    dataset: Iterable[Mapping[str, Any]],
    reward_funcs: Callable | Sequence[Callable] | None = None,
    reward_weights: Sequence[float] | None = None,
    num_trials: int = 1,
    max_tool_calling_iterations: int | None = 16,
    max_observation_chars: int | None = None,
    batch_size: int = 8,
    success_threshold: float = 1.0,
    category_column: str = "category",
    task_id_column: str = "task_id",
    keep_messages: bool = True,
    config: Mapping[str, Any] | None = None,
    log_every: int = 0,
) -> EvalResult:
    """Evaluates a policy on every row of `dataset`, `num_trials` times each, and summarizes the episodes.

    Args:
        policy (`Policy`):
            `TransformersPolicy` (a local checkpoint), `OpenAIChatPolicy` (an endpoint) or your own.
        environment_factory (`Callable[[], Any]`):
            Zero-argument callable returning a fresh environment, as for `GRPOTrainer(environment_factory=...)`.
        dataset (iterable of `dict`):
            The rows; each is passed whole to `reset(**row)`. The `prompt` column (chat messages) is the prompt; it
            defaults to one empty user message, which `reset`'s returned text fills in.
        reward_funcs (`Callable` or `list[Callable]`, *optional*):
            Reward functions with TRL's signature. The environment's `get_reward()` is added when it defines one.
        reward_weights (`list[float]`, *optional*):
            Weights of `reward_funcs` (1.0 each by default; `get_reward` always has weight 1).
        num_trials (`int`, *optional*, defaults to `1`):
            Attempts per task, for pass^k. With greedy decoding and a deterministic environment every trial is the
            same; use sampling or a stochastic user simulator to make trials differ.
        max_tool_calling_iterations (`int`, *optional*, defaults to `16`):
            Rounds of tool execution per episode (TRL's `max_tool_calling_iterations`); `None` for no limit.
        max_observation_chars (`int`, *optional*):
            Tool results longer than this are cut, with a note. Leave unset to show them as in training (where only
            the environment's own truncation applies).
        batch_size (`int`, *optional*, defaults to `8`):
            Episodes run in lockstep (one batched generation per round). AppWorld needs one server per episode.
        success_threshold (`float`, *optional*, defaults to `1.0`):
            An episode succeeds when its reward is `>= success_threshold` (`SGCDConfig.success_threshold`).
        category_column (`str`, *optional*, defaults to `"category"`):
            Row column giving the per-category breakdown; ignored when absent.
        task_id_column (`str`, *optional*, defaults to `"task_id"`):
            Row column naming the task (the row index when absent); trials of one task share it.
        keep_messages (`bool`, *optional*, defaults to `True`):
            Keep every episode's messages in the result (the metrics are computed before they are dropped).
        config (`dict`, *optional*):
            Settings to record in the result (environment, split...), merged with the policy's `describe()`.
        log_every (`int`, *optional*, defaults to `0`):
            Log progress every this many batches (0: never).

    Returns:
        `EvalResult`
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    rows = [dict(row) for row in dataset]
    if not rows:
        raise ValueError("The dataset is empty.")
    plan = [(index, trial) for index in range(len(rows)) for trial in range(num_trials)]
    schema_cache: dict[type, list[dict[str, Any]]] = {}
    records: list[EpisodeRecord] = []
    start = time.perf_counter()
    for batch_number, first in enumerate(range(0, len(plan), batch_size), start=1):
        episodes = []
        for index, trial in plan[first : first + batch_size]:
            row = rows[index]
            task = str(row.get(task_id_column, index))
            episodes.append(_start_episode(row, task, trial, environment_factory, schema_cache))
        _run_batch(policy, episodes, max_tool_calling_iterations, max_observation_chars)
        sources = _reward_sources(reward_funcs, reward_weights, episodes[0].environment)
        rewards = _score(episodes, sources, policy)
        for episode, reward in zip(episodes, rewards, strict=True):
            category = episode.row.get(category_column)
            records.append(
                EpisodeRecord(
                    task=episode.task,
                    trial=episode.trial,
                    category=None if category is None else str(category),
                    reward=reward,
                    success=not math.isnan(reward) and reward >= success_threshold,
                    num_tool_calls=episode.num_tool_calls,
                    num_tool_errors=episode.num_tool_errors,
                    stop=episode.stop or "answer",
                    error=episode.conversation.error,
                    messages=episode.conversation.completion,
                    info=_episode_info(episode.environment),
                )
            )
        if log_every and batch_number % log_every == 0:
            done = sum(record.success for record in records)
            logger.info("evaluated %d/%d episodes, %d successes", len(records), len(plan), done)
    settings = {**policy.describe(), **dict(config or {})}
    settings.update(
        num_trials=num_trials,
        max_tool_calling_iterations=max_tool_calling_iterations,
        max_observation_chars=max_observation_chars,
        success_threshold=success_threshold,
        wall_time_s=round(time.perf_counter() - start, 3),
    )
    environment_class = type(episodes[0].environment)
    result = summarize(
        records,
        config=settings,
        environment_metrics=environment_class if isinstance(environment_class, EnvironmentMetrics) else None,
        communication_tools=getattr(environment_class, "communication_tools", ()),
    )
    if not keep_messages:
        for record in result.episodes:
            record.messages = []
    return result
