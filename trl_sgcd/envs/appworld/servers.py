"""`AppWorldServerPool`: launches (or adopts) AppWorld servers and leases one per rollout."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .client import (
    URLS_ENV_VAR,
    AppWorldClient,
    AppWorldConnectionError,
    AppWorldDataMissingError,
    AppWorldError,
    _data_missing_message,
    _mentions_missing_data,
    _tail,
    resolve_appworld_root,
)
from .loopback import ALLOW_PUBLIC_ENV_VAR, loopback_command, public_allowed, public_listeners


logger = logging.getLogger(__name__)


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
            # AppWorld binds 0.0.0.0: run its (Python) entry point under the loopback wrapper.
            wrapper = loopback_command(shutil.which(appworld_bin) or appworld_bin)
            command = [*wrapper, appworld_bin, "serve", "environment", "--port", "{port}", "--root", "{root}"]
            command.append("--no-show-usage")
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
                    self._check_loopback(server)
                    pending.remove(server)
            if pending and time.monotonic() > deadline:
                names = ", ".join(server.url for server in pending)
                raise AppWorldError(
                    f"AppWorld servers did not answer within {self.startup_timeout}s: {names}. Logs: {self.log_dir}"
                )
            if pending:
                time.sleep(0.2)

    def _check_loopback(self, server: AppWorldServer) -> None:
        """Refuses a launched server that listens beyond the loopback interface, unless `APPWORLD_ALLOW_PUBLIC=1`."""
        if server.process is None or server.port is None or not public_listeners(server.port):
            return
        message = (
            f"The AppWorld server on port {server.port} listens on a non-loopback interface: anyone who reaches it can "
            "run code on this machine."
        )
        if public_allowed():
            logger.warning("%s Accepted: %s=1.", message, ALLOW_PUBLIC_ENV_VAR)
            return
        raise AppWorldError(
            f"{message} Launch `appworld` through its virtualenv's Python script (the loopback wrapper applies), or set "
            f"{ALLOW_PUBLIC_ENV_VAR}=1 on a trusted network."
        )

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
