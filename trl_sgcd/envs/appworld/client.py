"""`AppWorldClient`: a standard-library HTTP client for one `appworld serve environment` server, and the errors."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any


URLS_ENV_VAR = "SGCD_APPWORLD_URLS"


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
