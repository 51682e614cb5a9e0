"""`OfflineAirlineEnv`: the TRL `environment_factory` class, and the per-rollout `Episode` record."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .domain import POLICY, READ_TOOLS, ToolError, apply_tool, db_hash, make_db
from .tasks import Task, load_task, task_from_id


# How each argument is normalised, by parameter name: ids and codes are matched case-insensitively, in their canonical
# case. `canonical_call` uses the same rules, so the deviation check compares calls exactly as the tools read them.
_UPPER = frozenset({"flight_id", "origin", "destination"})
_LOWER = frozenset({"user_id", "reservation_id", "cabin"})
# Free text that does not change the end state; the deviation check ignores it.
_FREE_TEXT = frozenset({"summary"})


def _coerce(name: str, annotation: type, value: Any) -> Any:
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ToolError(f"{name} must be an integer.")
        try:
            number = float(value)
            if number == int(number):
                return int(number)
        except (ValueError, OverflowError):  # not a number, nan or infinity
            pass
        raise ToolError(f"{name} must be an integer.")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ToolError(f"{name} must be a string.")
    value = str(value).strip()
    return value.upper() if name in _UPPER else value.lower() if name in _LOWER else value


@functools.cache
def _signature(method: Callable[..., str]) -> tuple[inspect.Signature, dict[str, Any]]:
    return inspect.signature(method), typing.get_type_hints(method)


def _named_arguments(method: Callable[..., str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    names = [name for name in _signature(method)[0].parameters if name != "self"]
    return {**dict(zip(names, args, strict=False)), **kwargs}


def _clean_arguments(method: Callable[..., str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Binds and type-coerces the arguments of `method`, raising `ToolError` (not `TypeError`) when they do not fit."""
    signature, hints = _signature(method)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError as error:
        raise ToolError(f"bad arguments for {method.__name__}: {error}.") from None
    return {name: _coerce(name, hints[name], value) for name, value in bound.arguments.items() if name != "self"}


def _tool(method: Callable[..., str]) -> Callable[..., str]:
    """Turns a declaration into a recorded, never-raising tool.

    The decorated method only declares the tool: its signature and docstring are what TRL turns into the schema the
    model sees (`functools.wraps` keeps both). Its body never runs; `domain.OPERATIONS[name]` does the work, so the
    environment, the expert and the gold replay share one implementation.
    """

    @functools.wraps(method)
    def tool(self: OfflineAirlineEnv, *args: Any, **kwargs: Any) -> str:
        return self._run_tool(method, args, kwargs)

    return tool


@dataclass
class ToolCallRecord:
    """One tool call of a rollout, as the environment saw it.

    Args:
        name: tool name.
        arguments: the arguments as the model sent them (before normalisation).
        observation: the text returned to the model.
        error: whether the call was refused (unknown id, bad argument, policy).
        violation: whether the refusal was a written policy rule; any violation fails the episode.
    """

    name: str
    arguments: dict[str, Any]
    observation: str
    error: bool = False
    violation: bool = False


@dataclass
class Episode:
    """Everything an evaluation needs about one rollout. The tool fields fill in as the model calls tools; the outcome
    fields (`final_answer`, `db_match`, `missing_facts`, `reward`) are set by `score_answer`, which
    `offline_airline_reward` calls.
    """

    task_id: str
    category: str
    kind: str
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    final_answer: str | None = None
    db_match: bool | None = None
    missing_facts: list[str] | None = None
    reward: float | None = None

    @property
    def num_tool_calls(self) -> int:
        return len(self.tool_calls)

    @property
    def violations(self) -> list[str]:
        return [call.observation for call in self.tool_calls if call.violation]

    @property
    def success(self) -> bool | None:
        return None if self.reward is None else self.reward == 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "num_tool_calls": self.num_tool_calls, "success": self.success}


class OfflineAirlineEnv:
    """A small airline customer-service environment for TRL's `environment_factory`.

    TRL creates one instance per rollout, calls `reset(**row)` with the dataset row, and exposes the public methods
    below as tools. Tools never raise: a bad call (unknown id, wrong or missing arguments, a request the policy
    forbids) returns an observation starting with `"Error: "`. Every call is recorded in `episode`.

    The class deliberately has no `get_reward`: the reward needs the final assistant message, which TRL does not give
    to environments. Pass `offline_airline_reward` in `reward_funcs`; it scores each rollout from its completion and its
    environment, and fills in the outcome fields of `episode`.

    Example:

    ```python
    from trl import GRPOConfig, GRPOTrainer
    from trl_sgcd.envs import OfflineAirlineEnv, make_dataset, offline_airline_reward

    trainer = GRPOTrainer(
        model="path/to/model",
        reward_funcs=offline_airline_reward,
        train_dataset=make_dataset("train", n=512),
        environment_factory=OfflineAirlineEnv,
        args=GRPOConfig(max_tool_calling_iterations=4),
    )
    ```
    """

    def __init__(self) -> None:
        self._task: Task | None = None
        self._db: dict[str, Any] | None = None
        self._episode: Episode | None = None

    def reset(
        self, task: str | Task | None = None, task_id: str | None = None, prompt: Any = None, **kwargs: Any
    ) -> str | None:
        """Loads a task and a fresh database.

        Args:
            task: the task dict or its JSON string (the `task` column of `make_dataset`).
            task_id: used when `task` is absent: the id of a generated task, rebuilt with `task_from_id`.
            prompt: the row's prompt. When present it already holds the policy and the request, so nothing is returned.
            **kwargs: other dataset columns, ignored.

        Returns:
            None when the row has a prompt; otherwise the policy and the user's request, which TRL appends to the
            (empty) user message.
        """
        if task is None and task_id is None:
            raise ValueError("OfflineAirlineEnv.reset needs a `task` or a `task_id` column in the dataset row.")
        self._task = load_task(task) if task is not None else task_from_id(task_id)
        self._db = make_db(self._task["db_seed"])
        self._episode = Episode(self._task["task_id"], self._task["category"], self._task["kind"])
        return None if prompt else f"{POLICY}\n\n{self._task['request']}"

    @property
    def task(self) -> Task | None:
        """The current task (gold fields included: never show it to the policy)."""
        return self._task

    @property
    def episode(self) -> Episode | None:
        """The record of the current rollout."""
        return self._episode

    @property
    def db_hash(self) -> str | None:
        """Hash of the current database state."""
        return None if self._db is None else db_hash(self._db)

    def _run_tool(self, method: Callable[..., str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        name = method.__name__
        error = violation = False
        try:
            if self._task is None:
                raise ToolError("no task is loaded; call reset first.")
            arguments = _clean_arguments(method, args, kwargs)
            observation = apply_tool(self._db, self._task["user_id"], name, arguments)
        except ToolError as refusal:
            observation, error, violation = f"Error: {refusal}", True, refusal.violation
        except Exception as failure:  # tools must never raise into the rollout loop
            observation, error = f"Error: {type(failure).__name__}: {failure}", True
        if self._episode is not None:
            arguments = _named_arguments(method, args, kwargs)
            self._episode.tool_calls.append(ToolCallRecord(name, arguments, observation, error, violation))
        return observation

    @_tool
    def get_user(self, user_id: str) -> str:
        """Gets a user's profile: name, membership and reservation ids.

        Args:
            user_id: User id, e.g. "u3".
        """

    @_tool
    def get_reservation(self, reservation_id: str) -> str:
        """Gets a reservation: owner, flight, route, date, flight status, cabin, passengers, bags, paid, status.

        Args:
            reservation_id: Reservation id, e.g. "r12".
        """

    @_tool
    def get_flight(self, flight_id: str) -> str:
        """Gets a flight: route, date, status, free seats and economy price.

        Args:
            flight_id: Flight id, e.g. "F7".
        """

    @_tool
    def search_flights(self, origin: str, destination: str, date: str) -> str:
        """Lists the flights on a route and date: status, free seats and economy price.

        Args:
            origin: Airport code, e.g. "BOS".
            destination: Airport code, e.g. "SFO".
            date: Date as MM-DD, e.g. "05-20".
        """

    @_tool
    def cancel_reservation(self, reservation_id: str) -> str:
        """Cancels a reservation and refunds what was paid.

        Args:
            reservation_id: Reservation id, e.g. "r12".
        """

    @_tool
    def update_baggage(self, reservation_id: str, bags: int) -> str:
        """Sets the number of checked bags on a reservation and charges the fee for extra bags.

        Args:
            reservation_id: Reservation id, e.g. "r12".
            bags: New total of checked bags.
        """

    @_tool
    def book_flight(self, user_id: str, flight_id: str, cabin: str, passengers: int) -> str:
        """Books a flight for a user.

        Args:
            user_id: User id, e.g. "u3".
            flight_id: Flight id, e.g. "F7".
            cabin: "basic", "economy" or "business".
            passengers: Number of passengers.
        """

    @_tool
    def transfer_to_human(self, summary: str) -> str:
        """Transfers the user to a human agent.

        Args:
            summary: Short summary of the request.
        """


TOOL_NAMES: tuple[str, ...] = tuple(
    name
    for name, _ in inspect.getmembers(OfflineAirlineEnv, predicate=inspect.isfunction)
    if not name.startswith("_") and name != "reset"
)
"""The tool names, in the order TRL lists them (alphabetical public methods)."""


def canonical_call(name: str, arguments: dict[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]] | None:
    """A hashable, normalised form of a tool call, or None if the tool is unknown or the arguments do not fit.

    Free-text arguments (`transfer_to_human`'s `summary`) are left out: they do not change the end state.
    """
    if name not in TOOL_NAMES or not isinstance(arguments, dict):
        return None
    try:
        clean = _clean_arguments(inspect.unwrap(getattr(OfflineAirlineEnv, name)), (), arguments)
    except ToolError:
        return None
    return name, tuple(sorted((key, value) for key, value in clean.items() if key not in _FREE_TEXT))


def is_read(name: str) -> bool:
    """Whether tool `name` only reads the database."""
    return name in READ_TOOLS
