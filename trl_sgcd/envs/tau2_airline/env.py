"""`Tau2AirlineEnv`: one τ³ airline episode per instance, for TRL's `environment_factory`."""

from __future__ import annotations

import copy
import functools
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .runtime import GREETING, USER_TOOL_NAME, _evaluation_domain, _gc_paused, _make_environment, _tau2
from .tasks import _load_tasks, _split_task_ids
from .tools import _build_tool_function, airline_tool_schemas
from .users import BaseUserSimulator


logger = logging.getLogger(__name__)


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

    communication_tools = (USER_TOOL_NAME,)  # talks to the customer: not an environment tool in the zero-tool audit

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
