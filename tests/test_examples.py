"""Smoke tests of every example with tiny budgets: quickstart, AppWorld (fake servers), τ³ airline, the notebook."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
FAKE_SERVER = Path(__file__).parent / "fake_appworld_server.py"
TINY = [
    "--per_device_train_batch_size", "2", "--num_generations", "2", "--max_steps", "1", "--max_completion_length",
    "24", "--max_tool_calling_iterations", "2", "--use_cpu", "--bf16", "False", "--gradient_checkpointing", "False",
    "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "True",
    "--max_resample_rounds", "1",
]  # fmt: skip


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs_end_to_end(tmp_path):
    quickstart = _load("quickstart")
    summary = quickstart.main(["--quick", "--output_dir", str(tmp_path / "qs")])
    assert 0.0 <= summary["pass@1_before"] <= 1.0 and 0.0 <= summary["pass@1_after"] <= 1.0
    assert set(summary["category_success_after"]) <= {"action", "information", "no_action", "transfer"}
    saved = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert saved["pass@1_after"] == summary["pass@1_after"]
    assert (tmp_path / "qs" / "sgcd" / "config.json").exists()
    assert (tmp_path / "qs" / "eval_after.json").exists()
    files = {name: Path(path) for name, path in saved["files"].items()}
    assert files["credit_html"].suffix == ".html" and "<html" in files["credit_html"].read_text().lower()
    for name in ("credit_png", "plot"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files[name].stat().st_size > 1000
    paired = saved["paired"]
    assert paired["tasks"] == 8 and paired["gained"] + paired["lost"] <= 8 and 0.0 <= paired["p_value"] <= 1.0
    assert saved["solved_before"]["overall"][1] == 8


def test_paired_comparison_claims_only_what_was_measured():
    from types import SimpleNamespace

    quickstart = _load("quickstart")

    def result(successes):
        return SimpleNamespace(episodes=[SimpleNamespace(task=f"t{i}", success=s) for i, s in enumerate(successes)])

    same = quickstart.paired_comparison(result([1, 0, 1, 0]), result([1, 0, 1, 0]))
    assert (same["gained"], same["lost"], same["p_value"]) == (0, 0, 1.0) and "no difference" in same["verdict"]
    noisy = quickstart.paired_comparison(result([0, 0, 0, 1]), result([1, 1, 0, 0]))
    assert (noisy["gained"], noisy["lost"]) == (2, 1) and noisy["p_value"] == 1.0 and "noise" in noisy["verdict"]
    clear = quickstart.paired_comparison(result([0] * 8), result([1] * 8))
    assert clear["p_value"] == 2 / 2**8 and clear["verdict"].startswith("better beyond noise")


def test_quickstart_draws_the_most_credited_dump(tmp_path):
    quickstart = _load("quickstart")
    assert quickstart.most_credited_step(tmp_path) is None  # nothing dumped: the script says so instead of failing
    (tmp_path / "sgcd_credit").mkdir()
    for step, weights in ((0, [1.0, 1.2]), (5, [1.0, 1.9]), (10, [1.0, 1.0])):
        record = {"step": step, "row": 0, "group": 0, "weights": weights}
        (tmp_path / "sgcd_credit" / f"step_{step:06d}_rank0.jsonl").write_text(json.dumps(record) + "\n")
    assert quickstart.most_credited_step(tmp_path) == 5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_appworld(tmp_path):
    root = tmp_path / "appworld"
    (root / "data" / "datasets").mkdir(parents=True)
    (root / "data" / "datasets" / "train.txt").write_text("toyaaa_1\ntoyaaa_2\n")
    ports = [_free_port() for _ in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(FAKE_SERVER), "--port", str(p), "--root", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    deadline = time.time() + 30
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.time() < deadline, "fake AppWorld server did not start"
                time.sleep(0.1)
    yield root, [f"http://127.0.0.1:{p}" for p in ports]
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_appworld_example_trains_against_fake_servers(tiny_model_path, tmp_path, fake_appworld, monkeypatch):
    root, urls = fake_appworld
    monkeypatch.setenv("SGCD_APPWORLD_URLS", ",".join(urls))
    appworld = _load("appworld")
    trainer = appworld.main(
        ["--model_name_or_path", tiny_model_path, "--appworld_root", str(root), "--num_servers", "2",
         "--output_dir", str(tmp_path / "out"), *TINY]
    )  # fmt: skip
    assert trainer.state.global_step == 1
    assert any("rewards/AppWorldEnv/mean" in h for h in trainer.state.log_history)
    assert (tmp_path / "out" / "config.json").exists()


def test_airline_example_trains_with_a_scripted_customer(tmp_path):
    pytest.importorskip("tau2")
    from trl_sgcd.envs.tau2_airline import airline_tool_schemas, tau2_airline_system_prompt
    from trl_sgcd.tiny_model import make_tiny_model

    model = make_tiny_model(
        tmp_path / "tiny",
        texts=[tau2_airline_system_prompt(), json.dumps(airline_tool_schemas())],
        max_position_embeddings=16384,
    )
    airline = _load("airline")
    trainer = airline.main(
        ["--model_name_or_path", model, "--user_model", "scripted", "--output_dir", str(tmp_path / "out"), *TINY]
    )  # fmt: skip
    assert trainer.state.global_step == 1
    assert any("rewards/tau2_airline_reward/mean" in h for h in trainer.state.log_history)


def test_notebook_executes_headless(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "examples" / "notebooks" / "quickstart.ipynb", as_version=4)
    env = {"SGCD_NOTEBOOK_QUICK": "1", "SGCD_NOTEBOOK_OUT": str(tmp_path / "nb")}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(
            notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
    finally:
        for key in env:
            os.environ.pop(key, None)
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "pass@1:" in outputs
    assert (tmp_path / "nb" / "sgcd" / "config.json").exists()
    assert (tmp_path / "nb" / "before_after.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.suffix for p in (tmp_path / "nb" / "credit").iterdir()} == {".html", ".png"}
