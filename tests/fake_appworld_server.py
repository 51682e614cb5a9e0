"""A fake `appworld serve environment` server for the tests, written from scratch from the protocol description.

It speaks the same protocol as AppWorld 0.1.3's environment server (JSON `POST`s answering `{"output": ...}` on
`/initialize`, `/execute`, `/task_completed`, `/evaluate`, `/close`, `/close_all`; `GET /` and `GET /tasks/{id}`) and
keeps its rule of one live world per process: a call naming another task than the last initialized one fails.

The world is a toy: a key/value app (`apis.kv.set/get/delete/keys`), `apis.supervisor` (`show_profile`,
`show_active_task`, `complete_task(answer=..., status=...)`) and `apis.api_docs`. Agent code is never executed: a tiny
interpreter walks the `ast` of a small Python subset (literals, variables, single-name assignments, `+ - *`,
subscripts, `print`/`len`/`str`/`int`, and `apis.<app>.<api>(...)` calls) and rejects everything else. Each toy task
is evaluated by checks on the final key/value state and the submitted answer, like AppWorld's per-task tests.

Deliberate differences from the real server:
- Errors are HTTP 500 with a JSON `{"detail": message}` body. The real 0.1.3 server builds its `HTTPException` without
  a status code and so answers a bare "Internal Server Error" text; `plain_errors=True` (`--plain-errors`) mimics that.
- Error tracebacks are one line (`Execution failed. Traceback:\\nNameError: ...`), without file and line numbers.
- Fake-only endpoints: `GET /_fake/state` (the world, for assertions) and `POST /_fake/crash` (the server dies).
- It binds 127.0.0.1 (the real one binds 0.0.0.0) and only checks `<root>/data` when `--root` is passed.

Run it as a script: `python tests/fake_appworld_server.py --port 8123 [--root R] [--startup-delay S]`. It also accepts
the real CLI's `serve environment ... --no-show-usage` arguments, so it can stand in for the `appworld` executable.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import operator
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


SUPERVISOR = {"first_name": "Ada", "last_name": "Toy", "email": "ada.toy@example.com", "phone_number": "5550100"}


@dataclass(frozen=True)
class ToyTask:
    instruction: str
    difficulty: int
    initial: dict[str, Any]
    tests: tuple[tuple[str, Callable[[ToyWorld], bool]], ...]
    datetime: str = "2024-03-01T09:30:00"


TOY_TASKS: dict[str, ToyTask] = {
    "toyaaa_1": ToyTask(
        instruction="Store the number 1 under the key 'a' in the kv app, then mark the task as complete.",
        difficulty=1,
        initial={"seed": 7},
        tests=(
            ("the value under 'a' is 1", lambda w: w.kv.get("a") == 1),
            ("the task is marked complete", lambda w: w.status == "success"),
        ),
    ),
    "toyaaa_2": ToyTask(
        instruction="Which number is stored under the key 'seed' in the kv app? Give it as the answer.",
        difficulty=1,
        initial={"seed": 7},
        tests=(
            ("the answer is the number under 'seed'", lambda w: str(w.answer) == "7"),
            ("the kv store is unchanged", lambda w: w.kv == {"seed": 7}),
        ),
    ),
    "toybbb_1": ToyTask(
        instruction="Copy the value stored under 'x' to the key 'y' in the kv app, then mark the task as complete.",
        difficulty=2,
        initial={"x": "hello"},
        tests=(
            ("the value under 'y' equals the one under 'x'", lambda w: w.kv.get("y") == "hello"),
            ("the value under 'x' is kept", lambda w: w.kv.get("x") == "hello"),
            ("the task is marked complete", lambda w: w.status == "success"),
        ),
    ),
}

_REQUIRED = object()
# app -> api -> (description, [(parameter, default or _REQUIRED)])
API_SIGNATURES: dict[str, dict[str, tuple[str, list[tuple[str, Any]]]]] = {
    "kv": {
        "set": ("Store a value under a key.", [("key", _REQUIRED), ("value", _REQUIRED)]),
        "get": ("Return the value stored under a key.", [("key", _REQUIRED)]),
        "delete": ("Delete a key.", [("key", _REQUIRED)]),
        "keys": ("List the stored keys.", []),
    },
    "supervisor": {
        "show_profile": ("Show the supervisor's profile.", []),
        "show_active_task": ("Show the active task and its status.", []),
        "complete_task": ("Mark the active task as complete.", [("answer", None), ("status", "success")]),
    },
    "api_docs": {
        "show_app_descriptions": ("List the apps.", []),
        "show_api_descriptions": ("List the APIs of an app.", [("app_name", _REQUIRED)]),
        "show_api_doc": ("Show the documentation of one API.", [("app_name", _REQUIRED), ("api_name", _REQUIRED)]),
    },
}
APP_DESCRIPTIONS = {"kv": "A key/value store.", "supervisor": "The supervisor's tasks and profile."}
APP_DESCRIPTIONS["api_docs"] = "Documentation of the apps and their APIs."


class ToyExecutionError(Exception):
    """An error inside the agent's code, shown to the agent as `<kind>: <message>`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


_BINARY_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_BUILTINS: dict[str, Callable[..., Any]] = {"len": len, "str": str, "int": int}


@dataclass
class ToyWorld:
    task_id: str
    task: ToyTask
    experiment_name: str
    max_interactions: int = 1000
    kv: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    answer: Any = None
    status: str | None = None
    num_interactions: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self.kv = copy.deepcopy(self.task.initial)

    # ---- protocol operations ----
    def execute(self, code: str) -> str:
        if self.num_interactions >= self.max_interactions:
            limit = self.max_interactions
            return f"Execution failed. Traceback:\nException: Maximum number of executions ({limit}) reached."
        code = code.strip()
        try:
            tree = ast.parse(code)
        except SyntaxError as error:
            text = (error.text or "").rstrip()
            return f"Execution failed. Traceback:\nSyntax error in line:\n{text}\nMessage: {error.msg}"
        if not code:
            return "No code available to execute."
        self.num_interactions += 1
        printed: list[str] = []
        try:
            for statement in tree.body:
                self._statement(statement, printed)
        except ToyExecutionError as error:
            return f"Execution failed. Traceback:\n{error.kind}: {error}"
        output = "".join(printed)
        return output if output.strip() else "Execution successful."

    def evaluate(self) -> dict[str, Any]:
        passes, failures = [], []
        for requirement, check in self.task.tests:
            if check(self):
                passes.append({"requirement": requirement, "label": "no_op_fail"})
            else:
                failures.append({"requirement": requirement, "label": "no_op_fail", "trace": "check failed"})
        return {
            "success": not failures,
            "difficulty": self.task.difficulty,
            "num_tests": len(self.task.tests),
            "passes": passes,
            "failures": failures,
        }

    def report(self) -> str:
        result = self.evaluate()
        lines = [f"Task {self.task_id}: {len(result['passes'])}/{result['num_tests']} tests passed."]
        lines += [f"PASS {item['requirement']}" for item in result["passes"]]
        lines += [f"FAIL {item['requirement']}" for item in result["failures"]]
        return "\n".join(lines)

    # ---- the interpreter ----
    def _statement(self, node: ast.stmt, printed: list[str]) -> None:
        if isinstance(node, ast.Expr):
            self._value(node.value, printed)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self.variables[node.targets[0].id] = self._value(node.value, printed)
        elif isinstance(node, ast.Pass):
            pass
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            raise ToyExecutionError("Exception", "Imports are not allowed in this environment.")
        else:
            raise ToyExecutionError(
                "UnsupportedSyntax", f"the fake interpreter does not support `{type(node).__name__}` statements."
            )

    def _value(self, node: ast.expr, printed: list[str]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.variables:
                return self.variables[node.id]
            raise ToyExecutionError("NameError", f"name '{node.id}' is not defined")
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self._value(element, printed) for element in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {
                self._value(k, printed): self._value(v, printed) for k, v in zip(node.keys, node.values, strict=True)
            }
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
            left, right = self._value(node.left, printed), self._value(node.right, printed)
            try:
                return _BINARY_OPERATORS[type(node.op)](left, right)
            except TypeError as error:
                raise ToyExecutionError("TypeError", str(error)) from None
        if isinstance(node, ast.Subscript):
            container, index = self._value(node.value, printed), self._value(node.slice, printed)
            try:
                return container[index]
            except (KeyError, IndexError, TypeError) as error:
                raise ToyExecutionError(type(error).__name__, str(error)) from None
        if isinstance(node, ast.Call):
            return self._call(node, printed)
        raise ToyExecutionError("UnsupportedSyntax", f"the fake interpreter does not support `{type(node).__name__}`.")

    def _call(self, node: ast.Call, printed: list[str]) -> Any:
        if any(keyword.arg is None for keyword in node.keywords) or any(
            isinstance(arg, ast.Starred) for arg in node.args
        ):
            raise ToyExecutionError("UnsupportedSyntax", "`*args` and `**kwargs` are not supported.")
        args = [self._value(arg, printed) for arg in node.args]
        kwargs = {keyword.arg: self._value(keyword.value, printed) for keyword in node.keywords}
        if isinstance(node.func, ast.Name):
            if node.func.id == "print":
                printed.append(" ".join(str(value) for value in args) + "\n")
                return None
            if node.func.id in _BUILTINS:
                try:
                    return _BUILTINS[node.func.id](*args, **kwargs)
                except (TypeError, ValueError) as error:
                    raise ToyExecutionError(type(error).__name__, str(error)) from None
            raise ToyExecutionError("NameError", f"name '{node.func.id}' is not defined")
        path = []
        func = node.func
        while isinstance(func, ast.Attribute):
            path.insert(0, func.attr)
            func = func.value
        if not (isinstance(func, ast.Name) and func.id == "apis" and len(path) == 2):
            raise ToyExecutionError("UnsupportedSyntax", "only `apis.<app_name>.<api_name>(...)` calls are supported.")
        return self._api(path[0], path[1], args, kwargs)

    def _api(self, app: str, api: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if app not in API_SIGNATURES:
            raise ToyExecutionError("Exception", f"No app named '{app}'. Apps: {sorted(API_SIGNATURES)}.")
        if api not in API_SIGNATURES[app]:
            raise ToyExecutionError("Exception", f"No API named '{api}' in the app '{app}'.")
        parameters = API_SIGNATURES[app][api][1]
        if len(args) > len(parameters):
            raise ToyExecutionError("TypeError", f"{app}.{api} takes {len(parameters)} arguments, got {len(args)}.")
        bound = {name: default for name, default in parameters}
        bound.update(zip([name for name, _ in parameters], args, strict=False))
        for name, value in kwargs.items():
            if name not in bound:
                raise ToyExecutionError("TypeError", f"{app}.{api} got an unexpected argument '{name}'.")
            bound[name] = value
        missing = [name for name, value in bound.items() if value is _REQUIRED]
        if missing:
            raise ToyExecutionError("TypeError", f"{app}.{api} is missing the argument(s) {missing}.")
        return getattr(self, f"_api_{app}_{api}")(**bound)

    def _api_kv_set(self, key: str, value: Any) -> dict[str, str]:
        self.kv[str(key)] = copy.deepcopy(value)
        return {"message": f"Stored a value under '{key}'."}

    def _api_kv_get(self, key: str) -> Any:
        if key not in self.kv:
            raise ToyExecutionError("Exception", f'Response status code is 404:\n{{"message":"No key \'{key}\'."}}')
        return copy.deepcopy(self.kv[key])

    def _api_kv_delete(self, key: str) -> dict[str, str]:
        if self.kv.pop(key, None) is None:
            raise ToyExecutionError("Exception", f'Response status code is 404:\n{{"message":"No key \'{key}\'."}}')
        return {"message": f"Deleted '{key}'."}

    def _api_kv_keys(self) -> list[str]:
        return sorted(self.kv)

    def _api_supervisor_show_profile(self) -> dict[str, str]:
        return dict(SUPERVISOR)

    def _api_supervisor_show_active_task(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "instruction": self.task.instruction, "status": self.status or "active"}

    def _api_supervisor_complete_task(self, answer: Any, status: str) -> dict[str, str]:
        if self.status is not None:
            raise ToyExecutionError("Exception", "The active task is already completed.")
        if status not in ("success", "fail"):
            raise ToyExecutionError("Exception", f"Invalid status {status!r}: use 'success' or 'fail'.")
        self.answer, self.status = answer, status
        return {"message": "Marked the active task complete."}

    def _api_api_docs_show_app_descriptions(self) -> list[dict[str, str]]:
        return [{"name": name, "description": description} for name, description in APP_DESCRIPTIONS.items()]

    def _api_api_docs_show_api_descriptions(self, app_name: str) -> list[dict[str, str]]:
        apis = API_SIGNATURES.get(app_name)
        if apis is None:
            raise ToyExecutionError("Exception", f"No app named '{app_name}'.")
        return [{"name": name, "description": spec[0]} for name, spec in apis.items()]

    def _api_api_docs_show_api_doc(self, app_name: str, api_name: str) -> dict[str, Any]:
        spec = API_SIGNATURES.get(app_name, {}).get(api_name)
        if spec is None:
            raise ToyExecutionError("Exception", f"No API named '{api_name}' in the app '{app_name}'.")
        parameters = [{"name": name, "required": default is _REQUIRED} for name, default in spec[1]]
        return {"app_name": app_name, "api_name": api_name, "description": spec[0], "parameters": parameters}


class _HttpError(Exception):
    def __init__(self, status: int, detail: Any):
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def _require(body: dict[str, Any], *names: str) -> list[Any]:
    missing = [name for name in names if name not in body]
    if missing:  # the shape of FastAPI's (pydantic 1) request validation errors
        detail = [{"loc": ["body", name], "msg": "field required", "type": "value_error.missing"} for name in missing]
        raise _HttpError(422, detail)
    return [body[name] for name in names]


class FakeAppWorldServer:
    """The fake server, in-process (`start()`/`stop()`, a context manager) or as a script.

    Args:
        host: address to bind.
        port: port to bind (`0`: an ephemeral port, see `url`).
        tasks: the toy tasks (defaults to `TOY_TASKS`).
        plain_errors: answer errors with a bare "Internal Server Error" text like the real 0.1.3 server.
        exit_on_crash: `POST /_fake/crash` exits the process (script mode) instead of just stopping the server.
        log_errors: also write error messages to stderr (the server's log), as the real server prints tracebacks.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tasks: dict[str, ToyTask] | None = None,
        plain_errors: bool = False,
        exit_on_crash: bool = False,
        log_errors: bool = False,
    ):
        self.tasks = TOY_TASKS if tasks is None else tasks
        self.plain_errors = plain_errors
        self.exit_on_crash = exit_on_crash
        self.log_errors = log_errors
        self.world: ToyWorld | None = None
        self.initialize_calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAppWorldServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket: later requests are refused, like a dead server. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def __enter__(self) -> FakeAppWorldServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- endpoints ----
    def handle(self, method: str, path: str, body: dict[str, Any]) -> Any:
        with self._lock:
            if method == "GET" and path == "/":
                return {"message": "Welcome to the fake AppWorld environment server."}
            if method == "GET" and path.startswith("/tasks/"):
                return {"output": self._task_dict(path[len("/tasks/") :])}
            if method == "GET" and path == "/_fake/state":
                return {"output": self._state()}
            if method != "POST":
                raise _HttpError(405, "Method Not Allowed")
            if path == "/initialize":
                return {"output": self._initialize(body)}
            if path == "/_fake/crash":
                self._crash()
                return {"output": "crashing"}
            endpoints = {
                "/execute": lambda world: world.execute(str(_require(body, "code")[0])),
                "/task_completed": lambda world: world.status is not None,
                "/evaluate": lambda world: world.report() if body.get("report") else world.evaluate(),
                "/close": self._close,
                "/close_all": self._close,
            }
            if path not in endpoints:
                raise _HttpError(404, "Not Found")
            (task_id,) = _require(body, "task_id")
            return {"output": endpoints[path](self._active_world(task_id))}

    def _initialize(self, body: dict[str, Any]) -> dict[str, Any]:
        (task_id,) = _require(body, "task_id")
        experiment_name = str(body.get("experiment_name", "default"))
        task = self._task(task_id)
        # Like the real server: a new world replaces whatever world this process held.
        self.world = ToyWorld(task_id, task, experiment_name, max_interactions=int(body.get("max_interactions", 1000)))
        self.initialize_calls.append((task_id, experiment_name))
        return self._task_dict(task_id)

    def _close(self, world: ToyWorld) -> None:
        world.closed = True
        return None

    def _task(self, task_id: str) -> ToyTask:
        if task_id not in self.tasks:
            raise _HttpError(500, f"No task with id {task_id!r} in this AppWorld data.")
        return self.tasks[task_id]

    def _task_dict(self, task_id: str) -> dict[str, Any]:
        task = self._task(task_id)
        return {
            "task_id": task_id,
            "instruction": task.instruction,
            "supervisor": SUPERVISOR,
            "datetime": task.datetime,
        }

    def _active_world(self, task_id: str) -> ToyWorld:
        if self.world is None:
            raise _HttpError(500, "AppWorld has not been initialized.")
        if self.world.task_id != task_id:
            raise _HttpError(
                500, f"The active task world is {self.world.task_id}, but the request is for task {task_id}."
            )
        if self.world.closed:
            raise _HttpError(500, f"The world of task {task_id} is closed; initialize it again.")
        return self.world

    def _state(self) -> dict[str, Any] | None:
        world = self.world
        if world is None:
            return None
        return {
            "pid": os.getpid(),
            "task_id": world.task_id,
            "experiment_name": world.experiment_name,
            "kv": world.kv,
            "answer": world.answer,
            "status": world.status,
            "num_interactions": world.num_interactions,
            "closed": world.closed,
            "initialize_calls": len(self.initialize_calls),
        }

    def _crash(self) -> None:
        if self.exit_on_crash:
            threading.Timer(0.05, os._exit, args=(3,)).start()
        else:
            threading.Thread(target=self.stop, daemon=True).start()


def _make_handler(fake: FakeAppWorldServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    raise _HttpError(422, [{"loc": ["body"], "msg": "invalid JSON", "type": "value_error"}]) from None
                if not isinstance(body, dict):
                    raise _HttpError(422, [{"loc": ["body"], "msg": "expected an object", "type": "type_error"}])
                self._send(200, fake.handle(method, self.path.split("?")[0], body))
            except _HttpError as error:
                if fake.log_errors:
                    print(f"ERROR {method} {self.path}: {error.detail}", file=sys.stderr, flush=True)
                if error.status == 500 and fake.plain_errors:
                    self._send(500, None, text="Internal Server Error")
                else:
                    self._send(error.status, {"detail": error.detail})

        def _send(self, status: int, payload: Any, text: str | None = None) -> None:
            data = (text if text is not None else json.dumps(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake AppWorld environment server (toy world, for tests).")
    parser.add_argument("command", nargs="*", help="ignored `serve environment`, as in the real CLI")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--root", default=None, help="AppWorld root; the server refuses to start without <root>/data")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds to wait before listening")
    parser.add_argument("--plain-errors", action="store_true", help="bare 'Internal Server Error' bodies")
    parser.add_argument("--show-usage", dest="show_usage", action="store_true")
    parser.add_argument("--no-show-usage", dest="show_usage", action="store_false")
    args = parser.parse_args(argv)
    if args.root is not None and not os.path.isdir(os.path.join(args.root, "data")):
        print("Traceback (most recent call last):", file=sys.stderr)
        print(
            f"Exception: the AppWorld root '{args.root}' has no ./data folder. Get it with `appworld download data`.",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    time.sleep(args.startup_delay)
    server = FakeAppWorldServer(
        host=args.host, port=args.port, plain_errors=args.plain_errors, exit_on_crash=True, log_errors=True
    )
    print(f"Fake AppWorld environment server on {server.url} (pid {os.getpid()})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
