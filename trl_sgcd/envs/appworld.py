"""AppWorld for TRL: an HTTP client for `appworld serve environment`, a pool of server processes, and an
`environment_factory` environment exposing one `execute(code)` tool.

AppWorld pins `pydantic<2` and other packages that conflict with TRL, so it lives in its own virtualenv and this module
never imports it: the trainer talks to `appworld serve environment` processes over HTTP, with the standard library
only. An AppWorld server holds a single live world (task) per process, so the G sibling rollouts of one task that are
in flight together need G servers: `AppWorldServerPool` launches them and leases one per rollout, and every server
runs under its own `experiment_name` (AppWorld writes a task's outputs under that name).

What was simplified, and why:
- A rollout whose server dies mid-episode ends with an error observation and reward 0; the world is not rebuilt by
  replaying the executed code (LOOP does that). Crashes are rare and a zero reward keeps the batch well defined.
- The reward is the evaluator's binary `success` (the TGC unit) or its pass fraction, without penalties for failed
  executions (LOOP and open-instruct add some): SGCD needs the verifier reward, not a shaped one.
- TGC/SGC are aggregated in memory from the `/evaluate` results the environment records, rather than by running
  `appworld evaluate` over the experiment outputs on disk; the grouping (scenario = task id prefix) is the same.
- `/save_state`, `/load_state`, `/save_logs` and `/api_docs` are not wrapped: the adapter does not need them.
- The pool is POSIX-only (process groups) and relies on each server's own health, not on a supervisor process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from datasets import Dataset


__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_TASK_TEMPLATE",
    "SERVER_LOST_OBSERVATION",
    "TASK_COMPLETED_OBSERVATION",
    "AppWorldClient",
    "AppWorldConnectionError",
    "AppWorldDataMissingError",
    "AppWorldEnv",
    "AppWorldError",
    "AppWorldServer",
    "AppWorldServerPool",
    "appworld_metrics",
    "load_task_ids",
    "make_appworld_dataset",
    "resolve_appworld_root",
]

logger = logging.getLogger(__name__)
URLS_ENV_VAR = "SGCD_APPWORLD_URLS"
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


class AppWorldError(RuntimeError):
    """An AppWorld server call failed; the message carries the server's own message when it sent one."""

    def __init__(
        self, message: str, *, url: str | None = None, endpoint: str | None = None, status: int | None = None
    ):
        super().__init__(message)
        self.url = url
        self.endpoint = endpoint
        self.status = status


class AppWorldConnectionError(AppWorldError):
    """The server could not be reached (after the retries), or the connection broke during a call."""


class AppWorldDataMissingError(AppWorldError):
    """The AppWorld root has no `data/` folder: the user must run `appworld download data`."""


def resolve_appworld_root(root: str | os.PathLike | None = None) -> str:
    """Returns the AppWorld root as an absolute path: `root`, else `$APPWORLD_ROOT`, else the working directory."""
    return os.path.abspath(os.fspath(root) if root is not None else os.environ.get("APPWORLD_ROOT", os.getcwd()))


def _data_missing_message(root: str | None) -> str:
    where = f"'{os.path.join(root, 'data')}' does not exist" if root else "the server's AppWorld root has no data/"
    root_arg = f" --root {root}" if root else " --root <APPWORLD_ROOT>"
    return (
        f"AppWorld data not found: {where}. The AppWorld server needs the task data, which is not shipped with "
        "trl-sgcd (AppWorld's licence forbids redistributing it unencrypted). Download it once, in the AppWorld "
        f"virtualenv:\n    appworld download data{root_arg}\n(or run `scripts/setup_appworld.sh install`), or point "
        "`root` / APPWORLD_ROOT at an AppWorld root that already has a data/ folder."
    )


# `appworld serve environment` refuses to start without `<root>/data` and says so in its traceback (mentioning
# "./data" and `appworld download data`); the test fake words it differently but mentions the same two things.
_MISSING_DATA_PATTERN = re.compile(
    r"\./data\b|appworld download data|data (folder|directory) (is )?(missing|not found)"
)


# What the real server logs (and the fake answers) for a task id that its data does not have.
_UNKNOWN_TASK_PATTERN = re.compile(r"task directory \(\S+\) doesn't exist|No task with id")


def _mentions_missing_data(text: str) -> bool:
    return bool(_MISSING_DATA_PATTERN.search(text))


def _tail(path: str | os.PathLike | None, max_lines: int = 20) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-max_lines:]).rstrip()
    except OSError:
        return ""


class AppWorldClient:
    """Client of one `appworld serve environment` server (the JSON-over-HTTP protocol of AppWorld 0.1.3).

    Every endpoint is a JSON `POST` answering `{"output": ...}`; this class returns the `output`. Connection failures
    are retried with exponential backoff; HTTP errors are raised at once as `AppWorldError` carrying the server's
    message. A server runs one world at a time, so every call names the `task_id` it targets.

    Args:
        base_url (`str`):
            Server address, e.g. `"http://127.0.0.1:8000"`.
        timeout (`float`, *optional*, defaults to `180.0`):
            Seconds to wait for a response. AppWorld stops a code execution after 100 s by default, so keep this
            above that.
        retries (`int`, *optional*, defaults to `3`):
            How many times a connection failure is retried (`0`: no retry). `/execute` is only retried when the
            connection was refused, i.e. when the code certainly did not run, so code never runs twice.
        backoff (`float`, *optional*, defaults to `0.5`):
            Initial delay in seconds between retries, doubled after each attempt.
        log_path (`str`, *optional*):
            Log file of the server process. The real server answers internal errors with a bare
            "Internal Server Error"; the tail of its log is then appended to the error message.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 180.0,
        retries: int = 3,
        backoff: float = 0.5,
        log_path: str | os.PathLike | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.log_path = log_path
        # The servers are local or on the cluster: never route them through an `http_proxy` set for the Hub.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"AppWorldClient({self.base_url!r})"

    def ping(self, timeout: float = 2.0) -> bool:
        """Whether the server answers its index page (`GET /`), without retrying."""
        try:
            self._request("GET", "/", timeout=timeout, retries=0)
        except AppWorldError:
            return False
        return True

    def initialize(self, task_id: str, experiment_name: str = "trl_sgcd", **init_kwargs: Any) -> dict[str, Any]:
        """Loads `task_id` into the server's (single) world and returns the task: `task_id`, `instruction`,
        `supervisor` (`first_name`, `last_name`, `email`, `phone_number`) and `datetime`.

        `init_kwargs` are AppWorld's world options, e.g. `remote_apis_url`, `max_interactions`,
        `raise_on_unsafe_syntax`, `random_seed`, `timeout_seconds`.
        """
        return self._call("/initialize", {"task_id": task_id, "experiment_name": experiment_name, **init_kwargs})

    def execute(self, task_id: str, code: str) -> str:
        """Runs `code` in the world's Python session and returns what it printed (or the error traceback)."""
        return self._call("/execute", {"task_id": task_id, "code": code}, idempotent=False)

    def task_completed(self, task_id: str) -> bool:
        """Whether the agent has called `apis.supervisor.complete_task`."""
        return bool(self._call("/task_completed", {"task_id": task_id}))

    def evaluate(self, task_id: str, suppress_errors: bool = True, report: bool = False) -> Any:
        """Runs the task's evaluator on the current world state.

        Returns `{"success", "difficulty", "num_tests", "passes", "failures"}`, or the text report if `report`.
        """
        return self._call("/evaluate", {"task_id": task_id, "suppress_errors": suppress_errors, "report": report})

    def close(self, task_id: str) -> None:
        """Closes the world of `task_id` (frees its in-memory databases)."""
        self._call("/close", {"task_id": task_id})

    def close_all(self, task_id: str) -> None:
        """Closes every world of the server process. The server requires the active `task_id` here too."""
        self._call("/close_all", {"task_id": task_id})

    def show_task(self, task_id: str) -> dict[str, Any]:
        """Returns a task's description (`GET /tasks/{task_id}`) without initializing a world."""
        return self._call("/tasks/" + urllib.request.quote(task_id), None, method="GET")

    def _call(self, endpoint: str, payload: dict | None, method: str = "POST", idempotent: bool = True) -> Any:
        body = self._request(method, endpoint, payload, idempotent=idempotent)
        if not isinstance(body, dict) or "output" not in body:
            raise AppWorldError(
                f"AppWorld server {self.base_url} answered {endpoint} without an 'output' field: {str(body)[:300]}",
                url=self.base_url,
                endpoint=endpoint,
            )
        return body["output"]

    def _request(
        self,
        method: str,
        endpoint: str,
        payload: dict | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        idempotent: bool = True,
    ) -> Any:
        url = self.base_url + endpoint
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with self._opener.open(request, timeout=timeout or self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as error:
                raise self._http_error(endpoint, error) from None
            except (urllib.error.URLError, OSError) as error:
                reason = error.reason if isinstance(error, urllib.error.URLError) else error
                if isinstance(reason, TimeoutError):
                    raise AppWorldError(
                        f"AppWorld server {self.base_url} did not answer {endpoint} in {timeout or self.timeout}s.",
                        url=self.base_url,
                        endpoint=endpoint,
                    ) from None
                # A refused connection means the request never reached the server; a reset may come after the
                # server already ran the code, and running agent code twice would corrupt the world.
                retryable = isinstance(reason, ConnectionRefusedError) or idempotent
                if attempt >= retries or not retryable:
                    raise self._connection_error(endpoint, reason) from None
                time.sleep(self.backoff * 2**attempt)
                attempt += 1
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise AppWorldError(
                f"AppWorld server {self.base_url} answered {endpoint} with non-JSON content: {raw[:300]!r}",
                url=self.base_url,
                endpoint=endpoint,
            ) from None

    def _connection_error(self, endpoint: str, reason: object) -> AppWorldError:
        message = (
            f"AppWorld server {self.base_url} is unreachable ({endpoint}: {reason}). Is `appworld serve environment` "
            "running there?"
        )
        log = _tail(self.log_path)
        if _mentions_missing_data(log):
            message += f" Its log says the data is missing:\n{log}\n" + _data_missing_message(None)
            return AppWorldDataMissingError(message, url=self.base_url, endpoint=endpoint)
        message += f"\nLast lines of its log:\n{log}" if log else ""
        return AppWorldConnectionError(message, url=self.base_url, endpoint=endpoint)

    def _http_error(self, endpoint: str, error: urllib.error.HTTPError) -> AppWorldError:
        text = error.read().decode("utf-8", errors="replace").strip()
        detail: Any = text
        try:
            detail = json.loads(text).get("detail", text)
        except (json.JSONDecodeError, AttributeError):
            pass
        if isinstance(detail, list):  # FastAPI request validation errors (HTTP 422)
            detail = "; ".join(f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}" for item in detail)
        message = f"AppWorld server {self.base_url} failed on {endpoint} (HTTP {error.code}): {detail}"
        evidence = str(detail)
        if evidence.strip().lower() == "internal server error":
            # AppWorld 0.1.3 answers its own errors this way; the reason is the newest traceback in its log.
            log = _tail(self.log_path)
            evidence += "\n" + log
            message += ". The server's traceback is in its log" + (
                f"; last lines:\n{log}" if log else " (start it through AppWorldServerPool to capture the log)."
            )
        if _UNKNOWN_TASK_PATTERN.search(evidence):
            message += (
                "\nThe task is not in this server's AppWorld data: check the task id and split, the server's --root, "
                "and that `appworld download data` completed."
            )
        if _mentions_missing_data(evidence):
            return AppWorldDataMissingError(
                message + "\n" + _data_missing_message(None), url=self.base_url, endpoint=endpoint, status=error.code
            )
        return AppWorldError(message, url=self.base_url, endpoint=endpoint, status=error.code)


@dataclass(eq=False)
class AppWorldServer:
    """One server of an `AppWorldServerPool`: its client, and its process when the pool launched it.

    `name` is unique per server on the machine (process id + index); it suffixes the AppWorld experiment name so that
    concurrent worlds never share an experiment folder.
    """

    index: int
    url: str
    client: AppWorldClient
    name: str
    port: int | None = None
    process: subprocess.Popen | None = None
    log_path: str | None = None
    restarts: int = 0
    needs_check: bool = field(default=False, repr=False)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _terminate(process: subprocess.Popen, grace: float = 5.0) -> None:
    if process.poll() is not None:
        return
    # The pool starts each server in its own session, so its process group holds the server and anything it spawned.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait(timeout=grace)


def _shutdown_servers(servers: list[AppWorldServer]) -> None:
    for server in servers:
        if server.process is not None:
            _terminate(server.process)


class AppWorldServerPool:
    """A pool of `appworld serve environment` processes, leased one per rollout.

    AppWorld keeps one live world per server process, so every rollout in flight needs its own server: size the pool
    to the number of rollouts generated at once per process (`per_device_train_batch_size * steps_per_generation`
    in TRL's `GRPOTrainer`). Servers are started in parallel, each in its own process group with its log under
    `log_dir`; `close()` (also run at interpreter exit) terminates them.

    Args:
        size (`int`):
            Number of servers to launch.
        appworld_bin (`str`, *optional*, defaults to `"appworld"`):
            The `appworld` executable of the AppWorld virtualenv, e.g. `.appworld-venv/bin/appworld`.
        root (`str`, *optional*):
            AppWorld root directory (the one holding `data/`). Defaults to `$APPWORLD_ROOT`, else the working
            directory. Passed explicitly to every server, whose own `--root` default is its working directory.
        base_port (`int`, *optional*):
            Servers listen on `base_port, base_port + 1, ...`. By default free ports are picked.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Address the clients connect to (AppWorld 0.1.3 itself always binds `0.0.0.0`).
        startup_timeout (`float`, *optional*, defaults to `300.0`):
            Seconds to wait for all servers to answer. AppWorld imports are slow: a few seconds per server, more
            when many start at once.
        command (`list[str]`, *optional*):
            Command template replacing the `appworld serve environment` one, with `{port}`, `{host}` and `{root}`
            placeholders, e.g. `[sys.executable, "fake_server.py", "--port", "{port}"]`.
        env (`dict[str, str]`, *optional*):
            Extra environment variables for the servers.
        log_dir (`str`, *optional*):
            Where the server logs go; a temporary directory by default.
        check_data (`bool`, *optional*, defaults to `True`):
            Fail before launching anything when `<root>/data` is missing.
        lease_timeout (`float`, *optional*, defaults to `60.0`):
            Seconds `lease()` waits for a free server before raising.
        client_kwargs (`dict`, *optional*):
            Arguments of every `AppWorldClient` (`timeout`, `retries`, `backoff`).
        start (`bool`, *optional*, defaults to `True`):
            Launch the servers now; otherwise call `start()`.
    """

    def __init__(
        self,
        size: int,
        appworld_bin: str = "appworld",
        root: str | os.PathLike | None = None,
        base_port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 300.0,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: str | os.PathLike | None = None,
        check_data: bool = True,
        lease_timeout: float = 60.0,
        client_kwargs: Mapping[str, Any] | None = None,
        start: bool = True,
    ):
        if size < 1:
            raise ValueError(f"`size` must be at least 1, got {size}.")
        self.size = size
        self.root = resolve_appworld_root(root)
        self.base_port = base_port
        self.host = host
        self.startup_timeout = startup_timeout
        if command is None:
            command = [appworld_bin, "serve", "environment", "--port", "{port}", "--root", "{root}", "--no-show-usage"]
        self.command = list(command)
        self.env = dict(env or {})
        self.log_dir = os.fspath(log_dir) if log_dir is not None else tempfile.mkdtemp(prefix="appworld-servers-")
        self.check_data = check_data
        self.lease_timeout = lease_timeout
        self.client_kwargs = dict(client_kwargs or {})
        self._servers: list[AppWorldServer] = []
        self._free: list[AppWorldServer] = []
        self._condition = threading.Condition()
        self._launched = True
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown_servers, self._servers)
        if start:
            self.start()

    @classmethod
    def from_urls(
        cls, urls: str | Sequence[str], lease_timeout: float = 60.0, client_kwargs: Mapping[str, Any] | None = None
    ) -> AppWorldServerPool:
        """A pool over servers started elsewhere (e.g. by `scripts/setup_appworld.sh start`).

        `urls` is a list or a comma-separated string. Such servers cannot be restarted by the pool: a dead one makes
        `lease()` raise with its address.
        """
        if isinstance(urls, str):
            urls = [url.strip() for url in urls.split(",") if url.strip()]
        if not urls:
            raise ValueError("`urls` is empty: pass at least one AppWorld server URL.")
        pool = cls(len(urls), lease_timeout=lease_timeout, client_kwargs=client_kwargs, check_data=False, start=False)
        pool._launched = False
        for index, url in enumerate(urls):
            client = AppWorldClient(url, **pool.client_kwargs)
            pool._servers.append(
                AppWorldServer(index=index, url=client.base_url, client=client, name=pool._name(index))
            )
        pool._free = list(pool._servers)
        return pool

    @classmethod
    def from_env(cls, size: int, **kwargs: Any) -> AppWorldServerPool:
        """Uses the servers listed in `$SGCD_APPWORLD_URLS` if set, else launches `size` servers.

        Under a multi-process launch (`RANK`/`WORLD_SIZE` set), each process takes its own slice of the URL list and,
        with a `base_port`, its own port range, so no two processes share a server.
        """
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        urls = os.environ.get(URLS_ENV_VAR, "")
        if urls.strip():
            mine = [url.strip() for url in urls.split(",") if url.strip()][rank::world_size]
            if not mine:
                raise ValueError(f"${URLS_ENV_VAR} lists fewer servers than the {world_size} training processes.")
            client_kwargs = kwargs.get("client_kwargs")
            return cls.from_urls(mine, lease_timeout=kwargs.get("lease_timeout", 60.0), client_kwargs=client_kwargs)
        if kwargs.get("base_port") is not None:
            kwargs["base_port"] += rank * size
        return cls(size, **kwargs)

    def __len__(self) -> int:
        return len(self._servers)

    def __enter__(self) -> AppWorldServerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AppWorldServerPool(size={len(self._servers)}, free={len(self._free)}, urls={self.urls})"

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self._servers]

    @property
    def num_free(self) -> int:
        with self._condition:
            return len(self._free)

    def _name(self, index: int) -> str:
        # pid + index: unique across the processes of a multi-process run sharing one AppWorld root.
        return f"p{os.getpid()}s{index}"

    def start(self) -> None:
        """Launches the servers and waits until all of them answer."""
        if self._servers:
            raise RuntimeError("The pool is already started.")
        if self.check_data and not os.path.isdir(os.path.join(self.root, "data")):
            raise AppWorldDataMissingError(_data_missing_message(self.root))
        os.makedirs(self.log_dir, exist_ok=True)
        for index in range(self.size):
            port = self.base_port + index if self.base_port is not None else _free_port(self.host)
            url = f"http://{self.host}:{port}"
            log_path = os.path.join(self.log_dir, f"server-{index}.log")
            client = AppWorldClient(url, log_path=log_path, **self.client_kwargs)
            server = AppWorldServer(
                index=index, url=url, client=client, name=self._name(index), port=port, log_path=log_path
            )
            self._servers.append(server)
        try:
            for server in self._servers:
                self._spawn(server)
            self._wait_until_healthy(self._servers)
        except BaseException:
            self.close()
            raise
        with self._condition:
            self._free = list(self._servers)

    def _spawn(self, server: AppWorldServer) -> None:
        replacements = {"{port}": str(server.port), "{host}": self.host, "{root}": self.root}
        argv = []
        for part in self.command:
            for key, value in replacements.items():
                part = part.replace(key, value)
            argv.append(part)
        env = {**os.environ, "APPWORLD_ROOT": self.root, "PYTHONUNBUFFERED": "1", **self.env}
        with open(server.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                server.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.root if os.path.isdir(self.root) else None,
                    start_new_session=True,
                )
            except FileNotFoundError as error:
                raise AppWorldError(
                    f"Cannot launch the AppWorld server: {error}. Pass `appworld_bin=` the `appworld` executable of "
                    "the AppWorld virtualenv (see scripts/setup_appworld.sh)."
                ) from None

    def _wait_until_healthy(self, servers: Iterable[AppWorldServer]) -> None:
        pending = list(servers)
        deadline = time.monotonic() + self.startup_timeout
        while pending:
            for server in list(pending):
                if server.process is not None and server.process.poll() is not None:
                    raise self._startup_error(server)
                if server.client.ping(timeout=2.0):
                    pending.remove(server)
            if pending and time.monotonic() > deadline:
                names = ", ".join(server.url for server in pending)
                raise AppWorldError(
                    f"AppWorld servers did not answer within {self.startup_timeout}s: {names}. Logs: {self.log_dir}"
                )
            if pending:
                time.sleep(0.2)

    def _startup_error(self, server: AppWorldServer) -> AppWorldError:
        log = _tail(server.log_path, max_lines=30)
        if _mentions_missing_data(log):
            # The real server prints a long rich-formatted traceback; its last lines hold the message.
            last_lines = "\n".join(log.splitlines()[-6:])
            return AppWorldDataMissingError(
                _data_missing_message(self.root) + f"\nEnd of the server log ({server.log_path}):\n{last_lines}"
            )
        return AppWorldError(
            f"AppWorld server {server.index} exited during startup with code {server.process.returncode}. "
            f"Last lines of {server.log_path}:\n{log}"
        )

    def restart(self, server: AppWorldServer) -> None:
        """Restarts a launched server (killing it first if it still runs) and waits until it answers."""
        if server.process is None:
            raise AppWorldConnectionError(
                f"AppWorld server {server.url} was started outside this pool, which cannot restart it; restart it "
                "(e.g. `scripts/setup_appworld.sh start`).",
                url=server.url,
            )
        _terminate(server.process)
        server.restarts += 1
        self._spawn(server)
        self._wait_until_healthy([server])

    def lease(self, timeout: float | None = None) -> AppWorldServer:
        """Takes a free server (waiting up to `timeout`, default `lease_timeout`), restarting it first if it died."""
        timeout = self.lease_timeout if timeout is None else timeout
        with self._condition:
            if self._closed:
                raise RuntimeError("The AppWorld server pool is closed.")
            if not self._condition.wait_for(lambda: self._free, timeout=timeout):
                raise AppWorldError(
                    f"All {len(self._servers)} AppWorld servers are leased (waited {timeout}s). Every rollout in "
                    "flight needs its own server: use at least per_device_train_batch_size * steps_per_generation "
                    "servers per training process, and make sure every rollout's reward is computed (it releases "
                    "the server)."
                )
            server = self._free.pop(0)
        try:
            self._ensure_running(server)
        except BaseException:
            self.release(server, healthy=False)
            raise
        return server

    def _ensure_running(self, server: AppWorldServer) -> None:
        if server.process is not None:
            if server.process.poll() is not None or (server.needs_check and not server.client.ping()):
                warnings.warn(f"AppWorld server {server.url} is not running; restarting it.", stacklevel=3)
                self.restart(server)
        elif server.needs_check and not server.client.ping():
            raise AppWorldConnectionError(
                f"AppWorld server {server.url} does not answer. It was started outside this pool: restart it.",
                url=server.url,
            )
        server.needs_check = False

    def release(self, server: AppWorldServer, healthy: bool = True) -> None:
        """Returns a leased server; with `healthy=False` it is checked (restarted if dead) before its next lease."""
        with self._condition:
            if server in self._free:
                return
            server.needs_check = server.needs_check or not healthy
            self._free.append(server)
            self._condition.notify()

    @contextmanager
    def leased(self, timeout: float | None = None) -> Iterator[AppWorldServer]:
        """`with pool.leased() as server:` leases a server and releases it on exit (flagged if an error escaped)."""
        server = self.lease(timeout)
        healthy = False
        try:
            yield server
            healthy = True
        finally:
            self.release(server, healthy=healthy)

    def close(self) -> None:
        """Terminates every launched server (its whole process group). Idempotent."""
        with self._condition:
            self._closed = True
            self._free = []
        self._finalizer()


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


def _percent(numerator: float, denominator: float) -> float:
    return 100.0 * numerator / denominator if denominator else float("nan")


def appworld_metrics(results: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Task and scenario goal completion (TGC, SGC), in percent, overall and per difficulty.

    TGC is the share of tasks whose evaluation succeeded; SGC the share of scenarios (task id prefix before `_`, e.g.
    `82e2fac` for `82e2fac_1`) all of whose tasks succeeded. A scenario's difficulty is its tasks' highest.

    Each result needs `task_id` and `success`, and `difficulty` for the breakdown (`AppWorldEnv` records these). With
    several attempts per task (e.g. several generations in evaluation), the k-th attempts of all tasks form run k:
    TGC and SGC are averaged over runs, so every task must have the same number of attempts.

    Returns:
        `tgc`, `sgc`, `num_tasks`, `num_scenarios`, `num_runs`, and `tgc/difficulty_{d}`, `sgc/difficulty_{d}` for
        each difficulty present.
    """
    attempts: dict[str, list[bool]] = defaultdict(list)
    difficulty: dict[str, int] = {}
    for result in results:
        task_id = str(result["task_id"])
        attempts[task_id].append(bool(result["success"]))
        if result.get("difficulty") is not None:
            difficulty[task_id] = int(result["difficulty"])
    if not attempts:
        return {"tgc": float("nan"), "sgc": float("nan"), "num_tasks": 0, "num_scenarios": 0, "num_runs": 0}
    attempt_counts = {len(runs) for runs in attempts.values()}
    if len(attempt_counts) != 1:
        raise ValueError(f"Every task needs the same number of attempts to aggregate runs, got {attempt_counts}.")
    num_runs = attempt_counts.pop()
    scenarios: dict[str, list[str]] = defaultdict(list)
    for task_id in attempts:
        scenarios[task_id.split("_")[0]].append(task_id)
    scenario_difficulty = {
        scenario: max((difficulty[t] for t in tasks if t in difficulty), default=None)
        for scenario, tasks in scenarios.items()
    }

    def tgc(task_ids: list[str]) -> float:
        return _percent(sum(sum(attempts[t]) for t in task_ids), len(task_ids) * num_runs)

    def sgc(scenario_ids: list[str]) -> float:
        solved = sum(all(attempts[t][run] for t in scenarios[s]) for s in scenario_ids for run in range(num_runs))
        return _percent(solved, len(scenario_ids) * num_runs)

    metrics: dict[str, float] = {
        "tgc": tgc(list(attempts)),
        "sgc": sgc(list(scenarios)),
        "num_tasks": len(attempts),
        "num_scenarios": len(scenarios),
        "num_runs": num_runs,
    }
    for level in sorted(set(difficulty.values())):
        metrics[f"tgc/difficulty_{level}"] = tgc([t for t in attempts if difficulty.get(t) == level])
        metrics[f"sgc/difficulty_{level}"] = sgc([s for s in scenarios if scenario_difficulty[s] == level])
    return metrics


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
