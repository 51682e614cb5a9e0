"""`AppWorldEnv`, the `environment_factory` environment with one `execute(code)` tool, and the task datasets."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl_sgcd.eval.metrics import appworld_metrics

from .client import (
    AppWorldConnectionError,
    AppWorldDataMissingError,
    AppWorldError,
    _data_missing_message,
    resolve_appworld_root,
)
from .servers import AppWorldServer, AppWorldServerPool


if TYPE_CHECKING:
    from datasets import Dataset


logger = logging.getLogger(__name__)
SERVER_LOST_OBSERVATION = "Execution failed: the environment server stopped responding; this episode cannot continue."
TASK_COMPLETED_OBSERVATION = (
    "The task is already marked as completed (apis.supervisor.complete_task was called); no further code is executed."
)
DEFAULT_SYSTEM_PROMPT = """\
You are an autonomous agent that completes day-to-day tasks for a supervisor by operating apps (e.g. email, music, \
notes, payments, shopping) through their APIs. You act only by writing Python code and running it with the `execute` \
tool, in a persistent Python session where every app API is a function `apis.<app_name>.<api_name>(...)`.
- Look up what exists before using it: `apis.api_docs.show_app_descriptions()`, \
`apis.api_docs.show_api_descriptions(app_name=...)`, `apis.api_docs.show_api_doc(app_name=..., api_name=...)`.
- The supervisor's details and app passwords come from `apis.supervisor.show_profile()` and \
`apis.supervisor.show_account_passwords()`; most apps need a login first.
- `print` whatever you need to see; work step by step and check results before acting on them.
- When the task is done, call `apis.supervisor.complete_task()`, passing `answer=...` if the task asks a question."""
DEFAULT_TASK_TEMPLATE = (
    "\n\nTask: {instruction}\n\n"
    "Supervisor: {first_name} {last_name}, email {email}, phone {phone_number}. Current date and time: {datetime}."
)
DEFAULT_USER_PROMPT = "Complete the following task using the `execute` tool."


@dataclass
class _Episode:
    task_id: str
    server: AppWorldServer
    experiment_name: str
    num_executions: int = 0
    completed: bool = False
    broken: str | None = None


class AppWorldEnv:
    """An AppWorld task as a TRL `environment_factory` environment with a single tool, `execute(code)`.

    `reset(**row)` leases a server from the pool, loads the row's `task_id` and returns the task text (TRL appends it
    to the prompt's last user message). The model acts by calling `execute` with Python code; the episode's reward,
    from AppWorld's evaluator, comes from `get_reward()`, which also closes the world and releases the server. Server
    and tool errors become error observations: a tool call never raises into the training loop.

    TRL calls the factory with no arguments, so configure it with `AppWorldEnv.factory(pool, ...)`.

    Args:
        pool (`AppWorldServerPool`):
            The servers. Needs one free server per rollout in flight.
        max_observation_chars (`int`, *optional*, defaults to `12000`):
            Tool outputs longer than this are cut (the paper's budget), with a note saying how much was cut.
        reward (`str`, *optional*, defaults to `"success"`):
            `"success"`: 1.0 if every evaluator test passes, else 0.0 (the TGC unit). `"pass_fraction"`: the
            fraction of tests passed.
        experiment_name (`str`, *optional*, defaults to `"trl_sgcd"`):
            Prefix of AppWorld's experiment name; each server appends its own unique suffix.
        init_kwargs (`dict`, *optional*):
            AppWorld world options for `/initialize` (`max_interactions`, `remote_apis_url`, `random_seed`, ...).
        task_template (`str`, *optional*, defaults to `DEFAULT_TASK_TEMPLATE`):
            Format string of `reset`'s text, with fields `instruction`, `first_name`, `last_name`, `email`,
            `phone_number`, `datetime` and `task_id`.
        results (`list`, *optional*):
            If given, every evaluated rollout's record (see `last_result`) is appended to it, e.g. to compute
            `appworld_metrics` after an evaluation run.
    """

    def __init__(
        self,
        pool: AppWorldServerPool,
        max_observation_chars: int = 12_000,
        reward: str = "success",
        experiment_name: str = "trl_sgcd",
        init_kwargs: Mapping[str, Any] | None = None,
        task_template: str = DEFAULT_TASK_TEMPLATE,
        results: list[dict[str, Any]] | None = None,
    ):
        if reward not in ("success", "pass_fraction"):
            raise ValueError(f"`reward` must be 'success' or 'pass_fraction', got {reward!r}.")
        if max_observation_chars < 100:
            raise ValueError(f"`max_observation_chars` must be at least 100, got {max_observation_chars}.")
        self.pool = pool
        self.max_observation_chars = max_observation_chars
        self.reward = reward
        self.experiment_name = experiment_name
        self.init_kwargs = dict(init_kwargs or {})
        self.task_template = task_template
        self.results = results
        self.last_result: dict[str, Any] | None = None
        self._episode: _Episode | None = None

    @classmethod
    def factory(cls, pool: AppWorldServerPool, **kwargs: Any) -> Callable[[], AppWorldEnv]:
        """Returns the zero-argument callable TRL's `environment_factory` expects; `kwargs` go to `AppWorldEnv`."""
        cls(pool, **kwargs)  # validate the arguments now rather than inside the trainer

        def make_env() -> AppWorldEnv:
            return cls(pool, **kwargs)

        return make_env

    @classmethod
    def evaluation_metrics(cls, episodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """AppWorld's TGC/SGC over evaluated episodes (`trl_sgcd.eval.EnvironmentMetrics`), difficulty from `info`."""
        return appworld_metrics(
            {"task_id": e["task_id"], "success": e["success"], "difficulty": (e.get("info") or {}).get("difficulty")}
            for e in episodes
        )

    def reset(self, task_id: str | None = None, **row: Any) -> str:
        """Starts a rollout of `task_id` (a dataset column) on a leased server; returns the task text."""
        if task_id is None:
            raise ValueError(f"AppWorldEnv needs a `task_id` column in the dataset; got columns {sorted(row)}.")
        self._end_episode()  # a rollout whose reward was never computed still holds a server
        self.last_result = None
        for attempt in range(2):
            server = self.pool.lease()
            experiment_name = f"{self.experiment_name}_{server.name}"
            try:
                task = server.client.initialize(task_id, experiment_name=experiment_name, **self.init_kwargs)
                break
            except AppWorldConnectionError:
                # One retry on another (or the restarted) server; a second failure is a real outage.
                self.pool.release(server, healthy=False)
                if attempt == 1:
                    raise
            except BaseException:
                self.pool.release(server)
                raise
        self._episode = _Episode(task_id=task_id, server=server, experiment_name=experiment_name)
        supervisor = task.get("supervisor") or {}
        fields = {key: supervisor.get(key, "") for key in ("first_name", "last_name", "email", "phone_number")}
        return self.task_template.format(
            instruction=task.get("instruction", ""), datetime=task.get("datetime", ""), task_id=task_id, **fields
        )

    def execute(self, code: str) -> str:
        """Runs Python code in the AppWorld environment and returns what it printed.

        The code runs in a persistent Python session: variables survive between calls, and the apps are called as
        `apis.<app_name>.<api_name>(...)`. Use `print` to see results. Call `apis.supervisor.complete_task()` (with
        `answer=...` if the task asks a question) when the task is done.

        Args:
            code: Python code to run.

        Returns:
            The printed output of the code, or its error message.
        """
        episode = self._episode
        if episode is None:
            return "Execution failed: no AppWorld task is active."
        if episode.completed:
            return TASK_COMPLETED_OBSERVATION
        if episode.broken:
            return SERVER_LOST_OBSERVATION
        client = episode.server.client
        # The model sees short error texts; server URLs and log excerpts go to the log and the result record.
        try:
            output = client.execute(episode.task_id, code)
        except AppWorldConnectionError as error:
            self._mark_broken(episode, error)
            return SERVER_LOST_OBSERVATION
        except AppWorldError as error:
            logger.warning("AppWorld /execute failed for %s: %s", episode.task_id, error)
            status = f" (HTTP {error.status})" if error.status else ""
            return f"Execution failed: the environment server returned an error{status}."
        episode.num_executions += 1
        try:
            episode.completed = bool(client.task_completed(episode.task_id))
        except AppWorldConnectionError as error:
            self._mark_broken(episode, error)
        except AppWorldError as error:
            logger.warning("AppWorld /task_completed failed for %s: %s", episode.task_id, error)
        return self._truncate(output if isinstance(output, str) else json.dumps(output))

    def _mark_broken(self, episode: _Episode, error: AppWorldError) -> None:
        logger.warning("AppWorld server lost during %s; the episode scores 0: %s", episode.task_id, error)
        episode.broken = str(error)

    def get_reward(self) -> float:
        """Scores the finished rollout with AppWorld's evaluator, then closes the world and releases the server."""
        episode = self._episode
        if episode is None:
            return float(self.last_result["reward"]) if self.last_result else 0.0
        result: dict[str, Any] = {
            "task_id": episode.task_id,
            "experiment_name": episode.experiment_name,
            "num_executions": episode.num_executions,
            "completed": episode.completed,
            "success": False,
            "passes": 0,
            "num_tests": 0,
            "difficulty": None,
            "reward": 0.0,
            "error": episode.broken,
        }
        if not episode.broken:
            try:
                tracker = episode.server.client.evaluate(episode.task_id, suppress_errors=True)
                passes = len(tracker.get("passes") or [])
                num_tests = int(tracker.get("num_tests") or passes + len(tracker.get("failures") or []))
                success = bool(tracker.get("success"))
                pass_fraction = passes / num_tests if num_tests else float(success)
                result.update(
                    success=success, passes=passes, num_tests=num_tests, difficulty=tracker.get("difficulty")
                )
                result["reward"] = float(success) if self.reward == "success" else pass_fraction
            except AppWorldError as error:
                result["error"] = str(error)
                logger.warning("AppWorld evaluation of %s failed, reward 0: %s", episode.task_id, error)
        self._end_episode()
        self.last_result = result
        if self.results is not None:
            self.results.append(result)
        return result["reward"]

    def _end_episode(self) -> None:
        episode, self._episode = self._episode, None
        if episode is None:
            return
        healthy = episode.broken is None
        if healthy:
            try:
                episode.server.client.close(episode.task_id)
            except AppWorldError:
                healthy = False
        self.pool.release(episode.server, healthy=healthy)

    def _truncate(self, text: str) -> str:
        if len(text) <= self.max_observation_chars:
            return text
        note = "\n... [output truncated: {} more characters]"
        keep = self.max_observation_chars - len(note.format(len(text)))
        return text[:keep] + note.format(len(text) - keep)


def load_task_ids(split: str = "train", root: str | os.PathLike | None = None) -> list[str]:
    """Task ids of an AppWorld split (`train`, `dev`, `test_normal`, `test_challenge`), read from
    `<root>/data/datasets/<split>.txt` of the user's AppWorld download (`root` defaults to `$APPWORLD_ROOT`).

    Blank lines and `#` comments are skipped, and `:tag` suffixes are dropped.
    """
    root = resolve_appworld_root(root)
    path = Path(root, "data", "datasets", f"{split}.txt")
    if not path.is_file():
        if not Path(root, "data").is_dir():
            raise AppWorldDataMissingError(_data_missing_message(root))
        available = sorted(p.stem for p in Path(root, "data", "datasets").glob("*.txt"))
        raise FileNotFoundError(f"No AppWorld split {split!r} at {path}; available splits: {available}.")
    task_ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].split(":", 1)[0].strip()
        if line:
            task_ids.append(line)
    return task_ids


def make_appworld_dataset(
    split: str = "train",
    root: str | os.PathLike | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    user_prompt: str = DEFAULT_USER_PROMPT,
    task_ids: Sequence[str] | None = None,
) -> Dataset:
    """A `datasets.Dataset` of AppWorld tasks for `GRPOTrainer(environment_factory=AppWorldEnv.factory(...))`.

    Columns: `prompt` (chat messages: the system prompt and a user message to which `AppWorldEnv.reset` appends the
    task) and `task_id`. The tasks of `split` are read with `load_task_ids`, unless `task_ids` is given.
    """
    from datasets import Dataset

    task_ids = list(task_ids) if task_ids is not None else load_task_ids(split, root)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": user_prompt}
    ]
    return Dataset.from_dict({"prompt": [messages] * len(task_ids), "task_id": task_ids})
