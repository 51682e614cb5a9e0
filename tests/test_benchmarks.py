"""Benchmarks as smoke tests (tiny budgets) and the credit-precision metric on hand-made rollouts."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _record(tokens, assistant, weights, messages, success=False, task_id="cancel-7574884"):
    return {
        "success": success,
        "reference": "some reference",
        "metadata": {"task_id": task_id},
        "messages": messages,
        "tokens": tokens,
        "assistant_mask": assistant,
        "credit_mask": assistant,
        "weights": weights,
    }


def _call(name, **arguments):
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": name,
                                                                                               "arguments": arguments}}]}  # fmt: skip


def test_credit_precision_counts_extra_weight_on_the_first_deviation(tmp_path):
    reproduce = _load("reproduce")
    # Task cancel-7574884: the expert reads r30, then cancels r30. This rollout reads r30, then cancels r31.
    tokens = ["<tool_call>", "read", "r30", "</tool_call>", "obs", "obs", "<tool_call>", "cancel", "r31", "</tool_call>",
              "obs", "done", "."]  # fmt: skip
    assistant = [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1]
    messages = [
        _call("get_reservation", reservation_id="r30"),
        {"role": "tool", "name": "get_reservation", "content": "{}"},
        _call("cancel_reservation", reservation_id="r31"),
        {"role": "tool", "name": "cancel_reservation", "content": "{}"},
        {"role": "assistant", "content": "done."},
    ]
    weights = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.5, 1.0]
    record = _record(tokens, assistant, weights, messages)
    assert reproduce.deviation_token_mask(record) == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    dumps = tmp_path / "sgcd_credit"
    dumps.mkdir()
    successful = _record(tokens, assistant, [2.0] * 13, messages, success=True)  # successes are not scored
    (dumps / "step_000001_rank0.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(successful) + "\n")
    precision = reproduce.credit_precision(dumps)
    assert precision["failed_rollouts_scored"] == 1
    assert precision["credit_precision"] == pytest.approx(2.0 / 2.5)  # extra weight 1+1 of 2.5 on the deviation
    assert precision["deviation_token_share"] == pytest.approx(4 / 10)
    assert precision["precision_lift"] == pytest.approx((2.0 / 2.5) / 0.4)
    assert precision["rollout_precision_lift"] == pytest.approx((2.0 / 2.5) / 0.4)  # one rollout: the same
    # Where the extra weight lands: nothing before the deviation, 2.0 of 2.5 on it, 0.5 after (the final answer).
    position = reproduce.weight_position(dumps)
    assert position["weight_before"] == 0.0 and position["tokens_before"] == pytest.approx(0.4)
    assert position["weight_on"] == pytest.approx(0.8) and position["tokens_on"] == pytest.approx(0.4)
    assert position["weight_after"] == pytest.approx(0.2) and position["tokens_after"] == pytest.approx(0.2)
    assert position["lift_on"] == pytest.approx(2.0)
    # The category filter reads the dump's task category.
    record["metadata"]["category"] = "action"
    (dumps / "step_000001_rank0.jsonl").write_text(json.dumps(record) + "\n")
    assert reproduce.credit_precision(dumps, category="action")["failed_rollouts_scored"] == 1
    assert reproduce.credit_precision(dumps, category="information")["failed_rollouts_scored"] == 0


def test_per_rollout_precision_removes_the_pooling_effect(tmp_path):
    """Rollout-level constant weights (the `uniform` ablation) have per-rollout lift exactly 1, pooled lift above 1."""
    reproduce = _load("reproduce")
    messages = [
        _call("get_reservation", reservation_id="r30"),
        {"role": "tool", "name": "get_reservation", "content": "{}"},
        _call("cancel_reservation", reservation_id="r31"),
        {"role": "tool", "name": "cancel_reservation", "content": "{}"},
        {"role": "assistant", "content": "done."},
    ]
    short = _record(
        ["<tool_call>", "a", "</tool_call>", "o", "<tool_call>", "b", "</tool_call>", "o", "x"],
        [1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1.9] * 9,
        messages,
    )
    long_tokens = ["<tool_call>"] + ["a"] * 10 + ["</tool_call>", "o", "<tool_call>", "b", "</tool_call>", "o"]
    long_tokens += ["x"] * 10
    long = _record(long_tokens, [1] * 12 + [0] + [1] * 3 + [0] + [1] * 10, [1.1] * len(long_tokens), messages)
    dumps = tmp_path / "sgcd_credit"
    dumps.mkdir()
    (dumps / "step_000001_rank0.jsonl").write_text(json.dumps(short) + "\n" + json.dumps(long) + "\n")
    precision = reproduce.credit_precision(dumps)
    assert precision["rollouts_with_extra_weight"] == 2
    assert precision["rollout_precision_lift"] == pytest.approx(1.0)
    assert precision["precision_lift"] > 1.2  # pooled: the short rollout has both more weight and more deviation


def test_premature_answer_is_the_deviation_when_every_call_was_on_path():
    reproduce = _load("reproduce")
    tokens = ["<tool_call>", "read", "</tool_call>", "obs", "I", "cancelled", "it"]
    assistant = [1, 1, 1, 0, 1, 1, 1]
    messages = [
        _call("get_reservation", reservation_id="r30"),
        {"role": "tool", "name": "get_reservation", "content": "{}"},
        {"role": "assistant", "content": "I cancelled it"},
    ]
    record = _record(tokens, assistant, [1.0] * 7, messages)
    assert reproduce.deviation_token_mask(record) == [0, 0, 0, 0, 1, 1, 1]


def _run(mode, seed, successes, categories):
    tasks = {f"t{i}": ok for i, ok in enumerate(successes)}
    return {
        "mode": mode,
        "seed": seed,
        "eval": {"tasks": tasks, "task_categories": dict(zip(tasks, categories, strict=True))},
    }


def test_paired_comparison_against_off_by_seed_and_by_task():
    reproduce = _load("reproduce")
    categories = ["action"] * 4 + ["information"] * 2
    results = [
        _run("off", 0, [0, 0, 1, 1, 0, 1], categories),
        _run("sgcd", 0, [1, 0, 1, 0, 1, 1], categories),  # solves t0 and t4, loses t3: +1/6
        _run("off", 1, [0, 1, 1, 0, 0, 0], categories),
        _run("sgcd", 1, [1, 1, 1, 1, 0, 0], categories),  # solves t0 and t3: +2/6
        _run("sgcd", 2, [1, 1, 1, 1, 1, 1], categories),  # no `off` run for seed 2: not paired
    ]
    entry = reproduce.paired_against_off(results, "sgcd")
    assert entry["seeds"] == [0, 1] and entry["per_seed"] == pytest.approx([1 / 6, 2 / 6])
    assert entry["diff"] == pytest.approx(0.25)
    half = 12.706204736 * (2**0.5 / 12) / 2**0.5  # t(0.975, 1) * sd / sqrt(2); sd of (1/6, 2/6) = sqrt(2) / 12
    assert entry["ci"] == pytest.approx([0.25 - half, 0.25 + half])
    assert (entry["gained"], entry["lost"], entry["tasks"]) == (4, 1, 6)
    assert entry["p"] == pytest.approx(2 * (1 + 5) / 2**5)  # exact McNemar: P(X <= 1 | n=5, 1/2), two-sided
    # Task means (+1, 0, 0, 0, +0.5, 0): the bootstrap interval holds their mean and stays inside their range.
    assert 0.0 <= entry["task_ci"][0] <= 0.25 <= entry["task_ci"][1] <= 1.0
    information = reproduce.paired_against_off(results, "sgcd", "information")
    assert information["per_seed"] == pytest.approx([0.5, 0.0]) and (information["gained"], information["lost"]) == (
        1,
        0,
    )
    assert reproduce._two_sided_sign_test(0, 0) == 1.0 and reproduce._two_sided_sign_test(8, 1) == pytest.approx(
        0.0390625
    )


def test_reproduce_quick_runs_the_whole_pipeline(tmp_path):
    reproduce = _load("reproduce")
    out = reproduce.main(["--quick", "--out", str(tmp_path)])
    assert {(r["mode"], r["seed"]) for r in out["results"]} == {("off", 0), ("sgcd", 0), ("off", 1), ("sgcd", 1)}
    assert all(0.0 <= r["eval"]["metrics"]["pass@1"] <= 1.0 for r in out["results"])
    assert all(len(r["eval"]["tasks"]) == 6 for r in out["results"])
    assert (tmp_path / "summary.json").exists() and (tmp_path / "results_table.md").exists()
    assert {p.name for p in out["plots"]} >= {"outcome.png", "training_reward.png"}
    assert all(p.exists() and p.stat().st_size > 1000 for p in out["plots"])
    assert "| `sgcd` |" in out["table"] and "Paired against `off`" in out["table"]
    # The paired statistics come from both seeds and agree with the runs' own pass@1.
    paired = out["summary"]["paired"]["sgcd"]["all"]
    assert paired["seeds"] == [0, 1] and paired["tasks"] == 6
    by_run = {(r["mode"], r["seed"]): r["eval"]["metrics"]["pass@1"] for r in out["results"]}
    assert paired["per_seed"] == pytest.approx([by_run["sgcd", s] - by_run["off", s] for s in (0, 1)])
    # --report_only rebuilds the same table from the run directory alone, into another figures folder.
    again = reproduce.main(["--out", str(tmp_path), "--report_only", "--figures", str(tmp_path / "figures")])
    assert again["table"] == out["table"]
    assert json.loads((tmp_path / "figures" / "outcome.json").read_text())["paired"]["sgcd"]["all"]["seeds"] == [0, 1]


def test_overhead_benchmark_prints_its_ratios(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--steps", "2", "--warmup", "1", "--memory-steps", "1",
         "--completion-length", "8", "--reference-tokens", "16", "--num-generations", "4",
         "--segment-baseline", "rollout", "--out-json", str(tmp_path / "overhead.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("step_time_ratio=") and "peak_memory_ratio=" in last and "teacher_tokens_per_group=" in last
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["step_time_ratio"] > 0 and len(data["sgcd"]["breakdown"]) == 2
    assert data["grpo"]["memory"] > 0 and data["sgcd"]["memory"] > 0 and data["peak_memory_ratio"] > 0
    assert data["sgcd"]["student_tokens"] == 0  # the paper's segmenter: the student side from TRL's loss forward
    assert data["paired_step_time_ratio"] > 0
    # The arms alternate in one process, each with its own RNG stream: they generate the same completions.
    lengths = {arm: [row["completion_len"] for row in data[arm]["breakdown"]] for arm in ("grpo", "sgcd")}
    assert lengths["grpo"] == lengths["sgcd"]


def test_provider_latency_benchmark_runs_the_calls_concurrently():
    latency, groups = 0.3, 6
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "provider_latency.py"), "--groups", str(groups), "--latency",
         str(latency), "--repeats", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in last.split())
    assert int(fields["groups"]) == groups and "server=process" in result.stdout
    # One call's latency, not `groups` of them: calls in series would give a ratio of at least 6.
    assert 1.0 <= float(fields["ratio"]) < 2.5
    assert "max_in_flight=6" in result.stdout


def test_provider_latency_benchmark_measures_the_stage_inside_training():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "provider_latency.py"), "--trainer", "--groups", "2", "--latency",
         "0.2", "--repeats", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    fields = dict(item.split("=") for item in result.stdout.strip().splitlines()[-1].split())
    # The step waits for its last round's calls in both arms, and no call is waited for in series.
    for arm in ("prefetch_stage_ratio", "no_prefetch_stage_ratio"):
        assert 0.9 <= float(fields[arm]) < 3.0


def test_live_tensor_bytes_counts_the_peak_of_live_storage():
    overhead = _load("overhead")
    with overhead.LiveTensorBytes() as memory:
        a = torch.zeros(1024, 1024)  # 4 MiB
        b = a + 1  # 4 MiB
        del a
        c = torch.ones(512, 1024)  # 2 MiB
        assert memory.live == 6 * 2**20
        b.add_(1)  # in place: no new storage
        del b, c
    assert memory.peak == 8 * 2**20 and memory.live == 0


def test_qwen_vocab_tokenizer_has_the_real_qwen_ids():
    from trl_sgcd.tiny_model import qwen_vocab_tokenizer

    tokenizer = qwen_vocab_tokenizer()
    assert len(tokenizer) == 151646
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "cancel reservation ZFA04Y"}], add_generation_prompt=True, tokenize=True,
        return_dict=False,
    )  # fmt: skip
    assert ids[0] == 151644 and ids.count(151645) == 1
    assert tokenizer.decode(tokenizer("héllo wörld 123")["input_ids"]) == "héllo wörld 123"


def test_overhead_benchmark_runs_any_family_with_and_without_prefix_sharing(tmp_path):
    per_group = {}
    for flag in ("", "--no-shared-prefix"):
        out = tmp_path / f"overhead{flag}.json"
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--arch", "qwen3_5_text", "--steps", "1",
             "--warmup", "0", "--memory-steps", "0", "--completion-length", "8", "--reference-tokens", "16",
             "--num-generations", "4", "--out-json", str(out), *([flag] if flag else [])],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "arch=qwen3_5_text" in result.stdout.strip().splitlines()[-1]
        data = json.loads(out.read_text())
        assert data["args"]["arch"] == "qwen3_5_text" and data["step_time_ratio"] > 0
        per_group[flag] = data["sgcd"]["teacher_tokens_per_group"]
    # Unshared, each of the 4 siblings scores the ~16-token reference and the prompt again.
    assert per_group["--no-shared-prefix"] >= per_group[""] + 3 * 16
