"""Tests of the AppWorld adapter against a fake server (`fake_appworld_server.py`); AppWorld itself is not needed.

The slow test at the end installs the real `appworld` package in a throwaway venv and checks the missing-data path.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trl_sgcd.envs.appworld import (
    DEFAULT_SYSTEM_PROMPT,
    SERVER_LOST_OBSERVATION,
    TASK_COMPLETED_OBSERVATION,
    AppWorldClient,
    AppWorldConnectionError,
    AppWorldDataMissingError,
    AppWorldEnv,
    AppWorldError,
    AppWorldServerPool,
    appworld_metrics,
    load_task_ids,
    make_appworld_dataset,
)
from trl_sgcd.envs.appworld.loopback import public_listeners


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TESTS_DIR = Path(__file__).resolve().parent
FAKE_SCRIPT = TESTS_DIR / "fake_appworld_server.py"
SETUP_SCRIPT = TESTS_DIR.parent / "scripts" / "setup_appworld.sh"


def _load_fake_module():
    # Loaded by path so the tests work whether or not `tests/` is a package.
    name = "fake_appworld_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FAKE_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fake = _load_fake_module()
FAST_CLIENT = {"retries": 0, "timeout": 20}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake_command(*extra: str) -> list[str]:
    return [sys.executable, str(FAKE_SCRIPT), "--port", "{port}", "--root", "{root}", *extra]


def _group_is_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def fake_servers():
    """Starts in-process fake servers: `fake_servers(n, **kwargs)`; all are stopped at teardown."""
    started = []

    def start(n: int = 1, **kwargs):
        servers = [fake.FakeAppWorldServer(**kwargs).start() for _ in range(n)]
        started.extend(servers)
        return servers

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def appworld_root(tmp_path):
    """An AppWorld root with a `data/datasets/train.txt` listing the toy tasks (comment, tag and blank included)."""
    root = tmp_path / "appworld-root"
    (root / "data" / "datasets").mkdir(parents=True)
    (root / "data" / "datasets" / "train.txt").write_text("# toy split\ntoyaaa_1\ntoyaaa_2 : tagged\n\ntoybbb_1\n")
    return root


@pytest.fixture
def fake_appworld_bin(tmp_path):
    """An `appworld` executable that runs the fake server, to exercise the default `serve environment` command."""
    path = tmp_path / "bin" / "appworld"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SCRIPT}" "$@"\n')
    path.chmod(0o755)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Client


def test_client_speaks_every_endpoint(fake_servers):
    (server,) = fake_servers()
    client = AppWorldClient(server.url)
    assert client.ping()

    task = client.initialize("toyaaa_1", experiment_name="exp_a", max_interactions=20, random_seed=3)
    assert task["task_id"] == "toyaaa_1"
    assert "key 'a'" in task["instruction"]
    assert set(task["supervisor"]) == {"first_name", "last_name", "email", "phone_number"}
    assert task["datetime"]
    assert server.initialize_calls == [("toyaaa_1", "exp_a")]

    assert client.execute("toyaaa_1", 'apis.kv.set("a", 1)') == "Execution successful."
    assert client.execute("toyaaa_1", 'value = apis.kv.get("a")\nprint(value, apis.kv.keys())') == "1 ['a', 'seed']\n"
    assert client.task_completed("toyaaa_1") is False
    assert client.evaluate("toyaaa_1")["success"] is False  # not completed yet

    client.execute("toyaaa_1", "apis.supervisor.complete_task()")
    assert client.task_completed("toyaaa_1") is True
    tracker = client.evaluate("toyaaa_1", suppress_errors=True)
    assert tracker["success"] is True
    assert (tracker["num_tests"], len(tracker["passes"]), tracker["failures"]) == (2, 2, [])
    assert tracker["difficulty"] == 1
    assert "2/2 tests passed" in client.evaluate("toyaaa_1", report=True)

    assert client.show_task("toybbb_1")["task_id"] == "toybbb_1"
    client.close("toyaaa_1")
    with pytest.raises(AppWorldError, match="closed"):
        client.execute("toyaaa_1", "print(1)")
    client.initialize("toyaaa_2")
    client.close_all("toyaaa_2")
    assert server.world.closed


def test_client_surfaces_server_errors(fake_servers, tmp_path):
    (server,) = fake_servers()
    client = AppWorldClient(server.url)
    client.initialize("toyaaa_1")
    client.initialize("toyaaa_2")  # one world per process: this replaced toyaaa_1
    with pytest.raises(AppWorldError, match="active task world is toyaaa_2") as info:
        client.execute("toyaaa_1", "print(1)")
    assert info.value.status == 500 and info.value.endpoint == "/execute"
    with pytest.raises(AppWorldError, match=r"(?s)No task with id 'nope_1'.*not in this server's AppWorld data"):
        client.initialize("nope_1")
    with pytest.raises(AppWorldError, match=r"HTTP 422.*code: field required"):
        client._call("/execute", {"task_id": "toyaaa_2"})

    # The real 0.1.3 server answers a bare "Internal Server Error": the message then points at the server's log.
    (plain,) = fake_servers(plain_errors=True)
    log = tmp_path / "server.log"
    log.write_text("Traceback (most recent call last):\nValueError: the real reason\n")
    with pytest.raises(AppWorldError, match=r"(?s)Internal Server Error.*the real reason") as info:
        AppWorldClient(plain.url, log_path=log).initialize("nope_1")
    assert info.value.status == 500 and "AppWorldServerPool" not in str(info.value)
    with pytest.raises(AppWorldError, match="start it through AppWorldServerPool to capture the log"):
        AppWorldClient(plain.url).initialize("nope_1")


def test_client_retries_connection_failures(fake_servers):
    port = _free_port()
    with pytest.raises(AppWorldConnectionError, match="unreachable"):
        AppWorldClient(f"http://127.0.0.1:{port}", retries=0).initialize("toyaaa_1")

    late = {}

    def start_late():
        late["server"] = fake.FakeAppWorldServer(port=port).start()

    timer = threading.Timer(0.4, start_late)
    timer.start()
    try:
        client = AppWorldClient(f"http://127.0.0.1:{port}", retries=6, backoff=0.1)
        assert client.initialize("toyaaa_1")["task_id"] == "toyaaa_1"
    finally:
        timer.join()
        late["server"].stop()


def test_client_reports_missing_data_from_server_log(tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    log.write_text("Exception: Did not find any ./data in the AppWorld's root directory\n")
    client = AppWorldClient(f"http://127.0.0.1:{port}", retries=0, log_path=log)
    assert not client.ping()
    with pytest.raises(AppWorldDataMissingError, match=r"(?s)Did not find any \./data.*appworld download data"):
        client.initialize("toyaaa_1")


# ---------------------------------------------------------------------------------------------------------------------
# Server pool


def test_pool_missing_data_is_a_clear_error(tmp_path):
    empty_root = tmp_path / "no-data-root"
    empty_root.mkdir()
    # Checked before anything is launched ...
    with pytest.raises(AppWorldDataMissingError, match=r"appworld download data --root .*no-data-root"):
        AppWorldServerPool(1, root=empty_root, command=_fake_command())
    # ... and detected from the server's own startup failure when the pre-check is off.
    start = time.monotonic()
    with pytest.raises(AppWorldDataMissingError, match=r"(?s)appworld download data --root .*no \./data folder"):
        AppWorldServerPool(1, root=empty_root, command=_fake_command(), check_data=False, startup_timeout=30)
    assert time.monotonic() - start < 20  # the dead process is noticed, not waited out
    with pytest.raises(AppWorldDataMissingError, match="appworld download data"):
        load_task_ids("train", root=empty_root)


def test_pool_launches_leases_restarts_and_closes(appworld_root, fake_appworld_bin, tmp_path):
    pool = AppWorldServerPool(3, appworld_bin=fake_appworld_bin, root=appworld_root, log_dir=tmp_path / "logs")
    processes = [server.process for server in pool._servers]
    try:
        assert len(pool) == 3 and pool.num_free == 3
        assert all(process.poll() is None for process in processes)
        log = Path(pool._servers[0].log_path).read_text()
        assert "serve environment --port" in log and "--no-show-usage" in log  # the real CLI's arguments

        leased = [pool.lease() for _ in range(3)]
        assert len({server.url for server in leased}) == 3
        assert len({server.name for server in leased}) == 3
        with pytest.raises(AppWorldError, match="All 3 AppWorld servers are leased"):
            pool.lease(timeout=0.2)

        # A flagged but healthy server is checked, not restarted.
        pool.release(leased[0], healthy=False)
        assert pool.lease() is leased[0] and leased[0].restarts == 0
        for server in leased:
            pool.release(server)

        # A dead server is restarted when next leased.
        victim = pool._servers[1]
        old_pid = victim.process.pid
        os.killpg(old_pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        with pytest.warns(UserWarning, match="restarting"):
            leased = [pool.lease() for _ in range(3)]
        assert victim in leased and victim.restarts == 1 and victim.process.pid != old_pid
        assert victim.client.initialize("toybbb_1")["task_id"] == "toybbb_1"
        for server in leased:
            pool.release(server)

        with pool.leased() as server:
            assert pool.num_free == 2
            assert server.client.ping()
        assert pool.num_free == 3
        processes = [server.process for server in pool._servers]
    finally:
        pool.close()
    for process in processes:
        assert process.poll() is not None
        assert _group_is_gone(process.pid)
    with pytest.raises(RuntimeError, match="closed"):
        pool.lease()
    pool.close()  # idempotent


def test_pool_restarts_a_server_that_crashed_mid_episode(appworld_root):
    with AppWorldServerPool(1, root=appworld_root, command=_fake_command(), client_kwargs=FAST_CLIENT) as pool:
        env = AppWorldEnv(pool)
        env.reset(task_id="toyaaa_1")
        env._episode.server.client._call("/_fake/crash", {})
        pool._servers[0].process.wait(timeout=10)
        observation = env.execute("print(1)")
        assert observation == SERVER_LOST_OBSERVATION
        assert env.get_reward() == 0.0 and "is unreachable" in env.last_result["error"]
        with pytest.warns(UserWarning, match="restarting"):
            env.reset(task_id="toyaaa_1")
        assert pool._servers[0].restarts == 1
        assert env.execute('print(apis.kv.get("seed"))') == "7\n"
        env.get_reward()


def test_pool_from_urls_and_env(fake_servers, monkeypatch):
    servers = fake_servers(3)
    urls = [server.url for server in servers]
    pool = AppWorldServerPool.from_urls(",".join(urls), client_kwargs=FAST_CLIENT)
    assert pool.urls == urls and pool.num_free == 3

    monkeypatch.setenv("SGCD_APPWORLD_URLS", ",".join(urls))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert AppWorldServerPool.from_env(size=8).urls == [urls[1]]  # rank 1 of 2 takes every other server

    # An external server cannot be restarted: once flagged and dead, leasing it names it.
    server = pool.lease()
    servers[urls.index(server.url)].stop()
    pool.release(server, healthy=False)
    for _ in range(2):
        pool.release(pool.lease())  # leases go round-robin: first the two live servers, then the dead one
    with pytest.raises(AppWorldConnectionError, match=server.url):
        pool.lease()
    assert pool.num_free == 3  # the failed lease gave the server back


def test_pool_from_env_launches_per_rank_port_ranges(appworld_root, monkeypatch):
    monkeypatch.delenv("SGCD_APPWORLD_URLS", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    base_port = _free_port()
    with AppWorldServerPool.from_env(2, root=appworld_root, base_port=base_port, command=_fake_command()) as pool:
        # rank 0 would take base_port and base_port + 1
        assert pool.urls == [f"http://127.0.0.1:{base_port + 2}", f"http://127.0.0.1:{base_port + 3}"]
        assert all(server.client.ping() for server in pool._servers)


# ---------------------------------------------------------------------------------------------------------------------
# Environment (TRL `environment_factory` conventions)


@pytest.fixture
def pool_of(fake_servers):
    def make(n: int = 1) -> AppWorldServerPool:
        return AppWorldServerPool.from_urls([server.url for server in fake_servers(n)], client_kwargs=FAST_CLIENT)

    return make


def test_env_exposes_exactly_one_documented_tool(pool_of):
    from transformers.utils import get_json_schema

    make_env = AppWorldEnv.factory(pool_of(1), max_observation_chars=500)
    assert inspect.signature(make_env).parameters == {}  # TRL calls the factory with no arguments
    env = make_env()
    # TRL turns every public function of the class, other than reset/get_reward, into a tool.
    public = {name for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction) if not name[0] == "_"}
    assert public == {"reset", "execute", "get_reward"}
    schema = get_json_schema(env.execute)["function"]
    assert schema["name"] == "execute"
    assert schema["parameters"]["properties"]["code"]["type"] == "string"
    assert schema["parameters"]["required"] == ["code"]
    assert "apis.supervisor.complete_task" in schema["description"]
    with pytest.raises(ValueError, match="reward"):
        AppWorldEnv.factory(pool_of(1), reward="tests_passed")


def test_env_episode_success(pool_of):
    pool = pool_of(2)
    results = []
    env = AppWorldEnv.factory(pool, results=results, experiment_name="unit")()
    assert env.execute("print(1)") == "Execution failed: no AppWorld task is active."

    text = env.reset(task_id="toyaaa_1", prompt=[{"role": "user", "content": "hi"}])
    assert text.startswith("\n\nTask: Store the number 1 under the key 'a'")
    assert "Ada Toy" in text and "ada.toy@example.com" in text and "2024-03-01T09:30:00" in text
    assert pool.num_free == 1

    assert env.execute('apis.kv.set("a", 1)') == "Execution successful."
    assert env.execute('print(apis.kv.get("a"))') == "1\n"
    assert env.execute("apis.supervisor.complete_task()") == "Execution successful."
    assert env.execute('apis.kv.set("a", 2)') == TASK_COMPLETED_OBSERVATION
    assert env.get_reward() == 1.0
    assert pool.num_free == 2
    record = env.last_result
    assert record["success"] is True and (record["passes"], record["num_tests"], record["difficulty"]) == (2, 2, 1)
    assert record["num_executions"] == 3 and record["completed"] is True and record["error"] is None
    assert record["experiment_name"].startswith("unit_p")
    assert results == [record]
    assert env.get_reward() == 1.0  # idempotent: TRL may score an environment again
    assert len(results) == 1


def test_env_errors_become_observations(pool_of, fake_servers):
    env = AppWorldEnv(pool_of(1))
    env.reset(task_id="toyaaa_2")
    assert env.execute("def broken(:").startswith("Execution failed. Traceback:\nSyntax error")
    assert env.execute("print(missing)") == "Execution failed. Traceback:\nNameError: name 'missing' is not defined"
    assert "No key 'nope'" in env.execute('apis.kv.get("nope")')
    env.execute('apis.supervisor.complete_task(answer="8")')
    assert env.get_reward() == 0.0  # wrong answer

    # Someone else initializing the same server (one world per process) makes the server refuse our task: the model
    # gets a short error text, without server URLs or logs.
    env.reset(task_id="toyaaa_1")
    env._episode.server.client.initialize("toybbb_1")
    assert env.execute("print(1)") == "Execution failed: the environment server returned an error (HTTP 500)."
    assert env.get_reward() == 0.0 and "active task world is toybbb_1" in env.last_result["error"]

    # A server that dies mid-episode ends the episode with an error observation and a zero reward, never an exception.
    (server,) = fake_servers()
    pool = AppWorldServerPool.from_urls([server.url], client_kwargs=FAST_CLIENT)
    env = AppWorldEnv(pool)
    env.reset(task_id="toyaaa_1")
    server.stop()
    for _ in range(2):
        assert env.execute('apis.kv.set("a", 1)') == SERVER_LOST_OBSERVATION
    assert env.get_reward() == 0.0 and env.last_result["success"] is False
    assert pool.num_free == 1 and pool._servers[0].needs_check
    with pytest.raises(ValueError, match="task_id"):
        env.reset(prompt="no task id column")


def test_env_truncates_long_observations(pool_of):
    env = AppWorldEnv(pool_of(1), max_observation_chars=1000)
    env.reset(task_id="toyaaa_1")
    observation = env.execute('print("x" * 20000)')  # 20,001 characters with the newline
    assert len(observation) <= 1000
    kept = observation.index("\n")
    assert kept > 900 and observation[:kept] == "x" * kept
    assert observation.endswith(f"[output truncated: {20001 - kept} more characters]")
    assert env.execute("print(len(str(12345)))") == "5\n"  # short outputs untouched
    env.get_reward()


def test_env_pass_fraction_reward(pool_of):
    pool = pool_of(1)
    env = AppWorldEnv(pool, reward="pass_fraction")
    env.reset(task_id="toybbb_1")
    env.execute('apis.kv.set("y", "wrong")\napis.supervisor.complete_task()')
    assert env.get_reward() == pytest.approx(2 / 3)
    assert env.last_result["success"] is False and env.last_result["passes"] == 2

    env = AppWorldEnv(pool)  # binary success on the same world state scores 0
    env.reset(task_id="toybbb_1")
    env.execute('apis.kv.set("y", "wrong")\napis.supervisor.complete_task()')
    assert env.get_reward() == 0.0


def test_sibling_rollouts_get_isolated_worlds(pool_of):
    """G rollouts of one task in flight at once: one server each, distinct experiment names, independent worlds."""
    pool = pool_of(3)
    make_env = AppWorldEnv.factory(pool)
    siblings = [make_env() for _ in range(3)]
    for env in siblings:
        env.reset(task_id="toyaaa_1")
    assert pool.num_free == 0
    assert len({env._episode.experiment_name for env in siblings}) == 3
    siblings[0].execute('apis.kv.set("a", 1)')
    siblings[1].execute('apis.kv.set("a", 2)')
    for env in siblings:
        env.execute("apis.supervisor.complete_task()")
    assert [env.get_reward() for env in siblings] == [1.0, 0.0, 0.0]
    assert pool.num_free == 3

    # An environment reused for the next batch without being scored gives its server back on reset.
    env = siblings[0]
    env.reset(task_id="toyaaa_2")
    env.reset(task_id="toybbb_1")
    assert pool.num_free == 2
    env.get_reward()


# ---------------------------------------------------------------------------------------------------------------------
# Metrics and data


def test_appworld_metrics_hand_computed():
    results = [
        {"task_id": "s1_1", "success": True, "difficulty": 1},
        {"task_id": "s1_2", "success": True, "difficulty": 1},
        {"task_id": "s2_1", "success": True, "difficulty": 2},
        {"task_id": "s2_2", "success": False, "difficulty": 2},
        {"task_id": "s3_1", "success": False, "difficulty": 3},
    ]
    metrics = appworld_metrics(results)
    assert metrics["tgc"] == pytest.approx(60.0)  # 3 of 5 tasks
    assert metrics["sgc"] == pytest.approx(100 / 3)  # only s1 has all its tasks right
    assert (metrics["num_tasks"], metrics["num_scenarios"], metrics["num_runs"]) == (5, 3, 1)
    assert metrics["tgc/difficulty_1"] == 100.0 and metrics["sgc/difficulty_1"] == 100.0
    assert metrics["tgc/difficulty_2"] == 50.0 and metrics["sgc/difficulty_2"] == 0.0
    assert metrics["tgc/difficulty_3"] == 0.0 and metrics["sgc/difficulty_3"] == 0.0

    # Two attempts per task: run 1 solves both tasks of a_, run 2 only one -> SGC 50, TGC 75.
    two_runs = [
        {"task_id": "a_1", "success": True},
        {"task_id": "a_2", "success": True},
        {"task_id": "a_1", "success": True},
        {"task_id": "a_2", "success": False},
    ]
    metrics = appworld_metrics(two_runs)
    assert (metrics["tgc"], metrics["sgc"], metrics["num_runs"]) == (75.0, 50.0, 2)
    assert "tgc/difficulty_1" not in metrics

    with pytest.raises(ValueError, match="same number of attempts"):
        appworld_metrics(two_runs[:3])
    assert math.isnan(appworld_metrics([])["tgc"])


def test_load_task_ids_and_dataset(appworld_root, monkeypatch):
    assert load_task_ids("train", root=appworld_root) == ["toyaaa_1", "toyaaa_2", "toybbb_1"]
    monkeypatch.setenv("APPWORLD_ROOT", str(appworld_root))
    assert load_task_ids("train") == ["toyaaa_1", "toyaaa_2", "toybbb_1"]
    with pytest.raises(FileNotFoundError, match=r"available splits: \['train'\]"):
        load_task_ids("dev")

    dataset = make_appworld_dataset("train")
    assert dataset.column_names == ["prompt", "task_id"]
    assert dataset["task_id"] == ["toyaaa_1", "toyaaa_2", "toybbb_1"]
    prompt = dataset[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user"] and prompt[0]["content"] == DEFAULT_SYSTEM_PROMPT
    custom = make_appworld_dataset(task_ids=["toybbb_1"], system_prompt=None, user_prompt="Go.")
    assert custom[0]["prompt"] == [{"role": "user", "content": "Go."}]


# ---------------------------------------------------------------------------------------------------------------------
# The setup script's server management (with the fake server standing in for `appworld`)


def test_setup_script_start_status_stop(appworld_root, fake_appworld_bin, tmp_path):
    base_port = _free_port()
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "APPWORLD_ROOT": str(appworld_root),
        "APPWORLD_BIN": fake_appworld_bin,
        "APPWORLD_RUN_DIR": str(run_dir),
        "PYTHON": sys.executable,
    }

    def script(*args: str, **overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SETUP_SCRIPT), *args], env={**env, **overrides}, capture_output=True, text=True, timeout=60
        )

    started = script("start", "2", str(base_port))
    try:
        assert started.returncode == 0, started.stderr
        urls = f"http://127.0.0.1:{base_port},http://127.0.0.1:{base_port + 1}"
        assert f"export SGCD_APPWORLD_URLS={urls}" in started.stdout
        pids = [int(p.read_text()) for p in sorted(run_dir.glob("server-*.pid"))]
        assert len(pids) == 2
        status = script("status")
        assert status.returncode == 0 and "2/2 server(s) healthy" in status.stdout
        assert AppWorldServerPool.from_urls(urls).lease().client.ping()
    finally:
        stopped = script("stop")
    assert "stopped 2" in stopped.stdout
    deadline = time.monotonic() + 10
    while not all(_group_is_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_group_is_gone(pid) for pid in pids)
    assert "0/0 server(s) healthy" in script("status").stdout

    missing = script("start", "1", str(base_port), APPWORLD_ROOT=str(tmp_path / "empty"))
    assert missing.returncode == 2 and "appworld download data --root" in missing.stderr


# ---------------------------------------------------------------------------------------------------------------------
# A real GRPOTrainer run with the environment


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    pytest.importorskip("torch")
    from trl_sgcd.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), texts=[DEFAULT_SYSTEM_PROMPT] * 20)


def _grpo_trainer(output_dir, model_path, pool, dataset, results, **config):
    import torch
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,  # rollouts in flight at once: the pool needs 4 servers
        num_generations=2,
        max_tool_calling_iterations=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        **config,
    )
    return GRPOTrainer(
        model=model_path,
        args=args,
        train_dataset=dataset,
        environment_factory=AppWorldEnv.factory(pool, results=results, max_observation_chars=2000),
    )


def test_grpo_trainer_runs_with_appworld_env(tmp_path, tiny_model_path, fake_servers, appworld_root):
    servers = fake_servers(4)
    pool = AppWorldServerPool.from_urls([server.url for server in servers], client_kwargs=FAST_CLIENT)
    results = []
    dataset = make_appworld_dataset("train", root=appworld_root)
    trainer = _grpo_trainer(tmp_path, tiny_model_path, pool, dataset, results, max_completion_length=24, max_steps=2)
    trainer.train()

    assert trainer.state.global_step == 2
    logged = [entry for entry in trainer.state.log_history if "rewards/AppWorldEnv/mean" in entry]
    assert len(logged) == 2
    assert all(0.0 <= entry["rewards/AppWorldEnv/mean"] <= 1.0 for entry in logged)
    assert len(results) == 8  # 2 steps x 4 rollouts, each evaluated by its server
    assert all(r["task_id"] in fake.TOY_TASKS and r["num_tests"] > 0 and r["error"] is None for r in results)
    assert pool.num_free == 4  # every rollout gave its server back
    names = {name for server in servers for _, name in server.initialize_calls}
    assert len(names) == 4  # one experiment name per server


def test_grpo_trainer_executes_tool_calls(tmp_path, tiny_model_path, fake_servers):
    """A scripted policy emits a real `execute` tool call: TRL parses it, the environment runs it on the server, and
    the evaluator's verdict becomes the reward (toyaaa_1 is solved by the call, toybbb_1 is not)."""
    import torch

    pool = AppWorldServerPool.from_urls([server.url for server in fake_servers(4)], client_kwargs=FAST_CLIENT)
    results = []
    dataset = make_appworld_dataset(task_ids=["toyaaa_1", "toybbb_1"])
    trainer = _grpo_trainer(tmp_path, tiny_model_path, pool, dataset, results, max_completion_length=160, max_steps=1)
    tokenizer = trainer.processing_class
    code = 'apis.kv.set("a", 1)\nprint(apis.kv.get("a"))\napis.supervisor.complete_task()'
    tool_call = (
        "<tool_call>\n" + json.dumps({"name": "execute", "arguments": {"code": code}}) + "\n</tool_call><|im_end|>"
    )

    def scripted_generate(input_ids, attention_mask=None, **kwargs):
        rows = []
        for ids in input_ids:
            completion = "Done.<|im_end|>" if "<tool_response>" in tokenizer.decode(ids) else tool_call
            rows.append(ids.tolist() + tokenizer(completion, add_special_tokens=False)["input_ids"])
        width = max(len(row) for row in rows)
        return torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])

    trainer.model.generate = scripted_generate
    trainer.train()

    (logs,) = [entry for entry in trainer.state.log_history if "tools/call_frequency" in entry]
    assert logs["tools/call_frequency"] == 1.0 and logs["tools/failure_frequency"] == 0.0
    assert logs["rewards/AppWorldEnv/mean"] == pytest.approx(0.5)
    assert sorted((r["task_id"], r["reward"], r["num_executions"]) for r in results) == [
        ("toyaaa_1", 1.0, 1),
        ("toyaaa_1", 1.0, 1),
        ("toybbb_1", 0.0, 1),
        ("toybbb_1", 0.0, 1),
    ]
    assert all(r["completed"] for r in results)


# ---------------------------------------------------------------------------------------------------------------------
# The real AppWorld package (slow: creates a venv and installs ~230 MB)


@pytest.mark.slow
def test_real_appworld_server_without_data_fails_clearly(tmp_path):
    venv = os.environ.get("SGCD_APPWORLD_VENV")
    home = tmp_path / "home"  # `appworld install` unpacks its tests under ~/.appworld
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    if not venv:
        venv = str(tmp_path / "appworld-venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
        pip = [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "appworld==0.1.3.post1"]
        if subprocess.run(pip, env=env, timeout=1200).returncode != 0:
            pytest.skip("cannot pip install appworld here")
        subprocess.run([f"{venv}/bin/appworld", "install"], check=True, env=env, timeout=600)
    root = tmp_path / "root-without-data"
    root.mkdir()
    with pytest.raises(
        AppWorldDataMissingError, match=r"(?s)appworld download data --root .*Did not find any \./data"
    ):
        AppWorldServerPool(
            1, appworld_bin=f"{venv}/bin/appworld", root=root, check_data=False, env={"HOME": str(home)}
        )


# ---------------------------------------------------------------------------------------------------------------------
# Security of the setup script and the pool: numbers checked before bash arithmetic, servers kept on loopback


def _fake_bin(tmp_path, name, python_script, *extra):
    """An `appworld` stand-in running the fake server with `extra` arguments, as a Python or a shell script."""
    path = tmp_path / name
    if python_script:
        path.write_text(
            f"#!{sys.executable}\nimport runpy, sys\nsys.argv = [{str(FAKE_SCRIPT)!r}, *sys.argv[1:], *{list(extra)!r}]\n"
            f"runpy.run_path({str(FAKE_SCRIPT)!r}, run_name='__main__')\n"
        )
    else:
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SCRIPT}" "$@" {" ".join(extra)}\n')
    path.chmod(0o755)
    return str(path)


def _run_setup(appworld_root, tmp_path, bin_path, *args, **overrides):
    env = {
        **os.environ,
        "APPWORLD_ROOT": str(appworld_root),
        "APPWORLD_BIN": bin_path,
        "APPWORLD_RUN_DIR": str(tmp_path / "run"),
        "PYTHON": sys.executable,
        **overrides,
    }
    if "APPWORLD_ALLOW_PUBLIC" not in overrides:
        env.pop("APPWORLD_ALLOW_PUBLIC", None)
    return subprocess.run(["bash", str(SETUP_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "overrides"),
    [
        (("start", "1", "HOME[$(touch {marker})]"), {}),
        (("start", "1", "$(touch {marker})"), {}),
        (("start", "1", "8100"), {"STARTUP_TIMEOUT": "HOME[$(touch {marker})]"}),
        (("start", "HOME[$(touch {marker})]"), {}),
        (("start", "1", "1+$(touch {marker})"), {}),
        (("start", "1", "1+HOME[$(touch {marker})]"), {}),
        (("start", "1+HOME[$(touch {marker})]", "8100"), {}),
        (("start", "1", "8100"), {"STARTUP_TIMEOUT": "1+HOME[$(touch {marker})]"}),
    ],
)
def test_setup_script_rejects_non_numeric_values_before_arithmetic(
    appworld_root, fake_appworld_bin, tmp_path, args, overrides
):
    # `HOME[...]` names a set variable, so under `set -u` bash arithmetic evaluates the subscript and runs the command.
    marker = tmp_path / "executed"
    args = [a.format(marker=marker) for a in args]
    overrides = {k: v.format(marker=marker) for k, v in overrides.items()}
    result = _run_setup(appworld_root, tmp_path, fake_appworld_bin, *args, **overrides)
    assert result.returncode != 0 and "must be" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("server-*.pid"))


@pytest.mark.parametrize("command", ["stop", "status"])
def test_setup_script_never_evaluates_a_crafted_pid_file(appworld_root, fake_appworld_bin, tmp_path, command):
    marker = tmp_path / "executed"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "server-8100.pid").write_text(f"HOME[$(touch {marker})]\n")
    (run_dir / "server-1+HOME[$(touch {marker})].pid").write_text("12345\n")
    _run_setup(appworld_root, tmp_path, fake_appworld_bin, command)
    assert not marker.exists()


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="the listening-address check reads /proc/net/tcp")
def test_setup_script_keeps_servers_on_loopback(appworld_root, tmp_path):
    port = _free_port()
    # A Python entry point asking for every interface, as AppWorld does: the wrapper binds it to loopback.
    wrapped = _fake_bin(tmp_path, "appworld-py", True, "--host", "0.0.0.0")
    started = _run_setup(appworld_root, tmp_path, wrapped, "start", "1", str(port))
    try:
        assert started.returncode == 0, started.stderr
        assert public_listeners(port) == []
        assert AppWorldClient(f"http://127.0.0.1:{port}").ping()
    finally:
        _run_setup(appworld_root, tmp_path, wrapped, "stop")

    # A program the wrapper cannot reach that listens on every interface: refused and stopped, unless allowed.
    public = _fake_bin(tmp_path, "appworld-sh", False, "--host", "0.0.0.0")
    refused = _run_setup(appworld_root, tmp_path, public, "start", "1", str(port))
    assert refused.returncode == 3 and "APPWORLD_ALLOW_PUBLIC=1" in refused.stderr
    assert not list((tmp_path / "run").glob("server-*.pid"))
    deadline = time.monotonic() + 10
    while public_listeners(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert public_listeners(port) == []
    allowed = _run_setup(appworld_root, tmp_path, public, "start", "1", str(port), APPWORLD_ALLOW_PUBLIC="1")
    try:
        assert allowed.returncode == 0 and "listening beyond loopback" in allowed.stderr
        assert public_listeners(port) != []
    finally:
        _run_setup(appworld_root, tmp_path, public, "stop")


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="the listening-address check reads /proc/net/tcp")
def test_pool_wraps_appworld_on_loopback_and_refuses_public_servers(appworld_root, tmp_path, monkeypatch):
    monkeypatch.delenv("APPWORLD_ALLOW_PUBLIC", raising=False)
    wrapped = _fake_bin(tmp_path, "appworld-py", True, "--host", "0.0.0.0")
    pool = AppWorldServerPool(1, appworld_bin=wrapped, root=appworld_root, startup_timeout=30)
    try:
        assert pool.command[1].endswith("loopback.py") and public_listeners(pool.lease().port) == []
    finally:
        pool.close()
    public = _fake_bin(tmp_path, "appworld-sh", False, "--host", "0.0.0.0")
    with pytest.raises(AppWorldError, match="non-loopback"):
        AppWorldServerPool(1, appworld_bin=public, root=appworld_root, startup_timeout=30)
