"""docs/your_environment.md runs as written: its environment, dataset and reward train one step of
`SGCDGRPOTrainer` with a tiny local model, and `trl-sgcd eval --env file.py:Name` (and `module:Name`) evaluates it."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from trl_sgcd.cli import main


torch.set_num_threads(1)
DOC = Path(__file__).resolve().parent.parent / "docs" / "your_environment.md"


def _blocks(kind):
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def _substitute(code, replacements):
    for old, new in replacements.items():
        assert code.count(old) == 1, f"the doc's example no longer contains {old!r}"
        code = code.replace(old, new)
    return code


@pytest.fixture
def vault(tmp_path, monkeypatch):
    env_code, train_code = _blocks("python")[:2]
    assert len(env_code.strip().splitlines()) + len(train_code.strip().splitlines()) <= 40
    (tmp_path / "vault_env.py").write_text(env_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path, train_code
    sys.modules.pop("vault_env", None)


def test_doc_example_trains_and_evaluates(vault, tiny_model_path, capsys):
    tmp_path, train_code = vault
    out = tmp_path / "vault-run"
    code = _substitute(
        train_code,
        {
            '"Qwen/Qwen3-0.6B"': repr(tiny_model_path),
            'output_dir="vault-sgcd"': f"output_dir={str(out)!r}, use_cpu=True, report_to='none', logging_steps=1",
            "max_steps=200": "max_steps=1",
            "max_completion_length=512": "max_completion_length=48",
            "per_device_train_batch_size=8, num_generations=8": "per_device_train_batch_size=4, num_generations=4",
        },
    )
    namespace = {}
    exec(compile(code, "train_vault.py", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "sgcd/tools/zero_tool_success_frac" in logged and "sgcd/groups/mixed_frac" in logged
    assert (out / "config.json").is_file()

    # The example's pieces behave as the doc says.
    from vault_env import VaultEnv, make_dataset, vault_reward

    train, test = make_dataset("train", n=4), make_dataset("test", n=4)
    assert set(train["code"]).isdisjoint(test["code"])
    env = VaultEnv()
    assert env.reset(**train[0]) is None and train[0]["code"] in env.read_note("vault")
    answer = [{"role": "assistant", "content": f"The code is {train[0]['code']}."}]
    lookup_only = [{"role": "tool", "content": env.read_note("vault")}]
    assert vault_reward([answer, lookup_only], code=[train[0]["code"]] * 2) == [1.0, 0.0]

    # trl-sgcd eval on the trained checkpoint, the environment named by file path.
    results = tmp_path / "results.json"
    env_file = str(tmp_path / "vault_env.py")
    argv = ["eval", "--model", str(out), "--env", f"{env_file}:VaultEnv", "--dataset", f"{env_file}:make_dataset"]
    argv += ["--reward", f"{env_file}:vault_reward", "--num-tasks", "3", "--max-new-tokens", "16", "--quiet"]
    assert main([*argv, "--out", str(results)]) == 0
    metrics = json.loads(results.read_text())["metrics"]
    assert metrics["num_tasks"] == 3 and 0.0 <= metrics["pass@1"] <= 1.0
    assert "pass@1" in capsys.readouterr().out


COUNTER_MODULE = """
class Counter:
    def reset(self, **row):
        self.calls = 0

    def bump(self) -> str:
        \"\"\"Adds one.\"\"\"
        self.calls += 1
        return str(self.calls)

    def get_reward(self) -> float:  # scored by the environment itself: no --reward needed
        return float(self.calls >= 1)
"""
ROWS = [{"prompt": [{"role": "user", "content": "bump once"}], "task_id": str(i), "category": "c"} for i in range(2)]


def test_cli_eval_accepts_a_module_factory_and_a_jsonl_dataset(tmp_path, tiny_model_path, capsys, monkeypatch):
    (tmp_path / "counter_env.py").write_text(COUNTER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = tmp_path / "counter.json"
    argv = ["eval", "--model", tiny_model_path, "--env", "counter_env:Counter", "--dataset", str(rows)]
    assert main([*argv, "--max-new-tokens", "8", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["num_tasks"] == 2 and result["config"]["environment"] == "counter_env:Counter"
    argv[argv.index("counter_env:Counter")] = "counter_env:Missing"
    assert main(argv) == 2 and "has no attribute 'Missing'" in capsys.readouterr().err
    assert main(["eval", "--model", "m", "--env", "counter_env:Counter"]) == 2
    assert "needs --dataset" in capsys.readouterr().err
    assert main(["eval", "--model", "m", "--env", "nowhere.py:Env", "--dataset", str(rows)]) == 2
    assert "No Python file" in capsys.readouterr().err
    assert main(["eval", "--model", "m", "--env", "offline_airline", "--reward", "x:y"]) == 2
    assert "custom environment" in capsys.readouterr().err
