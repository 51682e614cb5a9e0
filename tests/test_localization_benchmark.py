"""`benchmarks/localization.py`: the lift measure on hand-made dumps, and the `--quick` run (slow)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from trl_sgcd.envs.offline_airline import make_task


ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_localization", ROOT / "benchmarks" / "localization.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _task():
    return next(t for s in range(1, 200) if (t := make_task("cancel", s)) is not None)


def _record(task, calls, weights, success):
    """Tokens: `<tool_call> name </tool_call> obs` per call, then `done .`; weights per token."""
    messages, tokens, credit = [], [], []
    for name, args in calls:
        messages += [
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]},
            {"role": "tool", "content": "{}"},
        ]
        tokens += ["<tool_call>", name, "</tool_call>", "obs"]
        credit += [1, 1, 1, 0]
    messages.append({"role": "assistant", "content": "done."})
    tokens += ["done", "."]
    credit += [1, 1]
    return {
        "success": success,
        "reference": "ref",
        "metadata": {"task_id": task["task_id"], "category": task["category"]},
        "messages": messages,
        "tokens": tokens,
        "weights": weights,
        "credit_mask": credit,
    }


def test_lifts_before_on_after_the_deviation_and_on_successful_decisions(tmp_path):
    bench = _load()
    task = _task()
    read, write = ((c["name"], c["arguments"]) for c in task["actions"])  # get_reservation, cancel_reservation
    wrong = (write[0], {"reservation_id": "r999"})
    records = [
        # Failed at step 2 (wrong write): weight on the read before it, then on the wrong write.
        _record(task, [read, wrong], [2, 2, 2, 1, 1, 1, 1, 1, 1, 1], False),
        _record(task, [read, wrong], [1, 1, 1, 1, 2, 2, 2, 1, 1, 1], False),
        # A success: weight on its write (the expert's decision).
        _record(task, [read, write], [1, 1, 1, 1, 2, 2, 2, 1, 1, 1], True),
    ]
    dump = tmp_path / "sgcd_credit"
    dump.mkdir()
    (dump / "step_000000_rank0.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    rows = bench.rollout_lifts(dump)
    assert [r["kind"] for r in rows] == ["failed", "failed", "success"] and all(r["weighted"] for r in rows)
    # 8 credited tokens: 3 before (the read), 3 on (the wrong write), 2 after (the final answer).
    assert rows[0]["before"] == pytest.approx(8 / 3) and rows[0]["on"] == 0.0 and rows[0]["after"] == 0.0
    assert rows[1]["on"] == pytest.approx(8 / 3) and rows[1]["before"] == 0.0
    assert rows[2]["decision"] == pytest.approx(8 / 3)
    summary = bench.summarize(rows)
    assert summary["lift"] == pytest.approx(4 / 3) and summary["failed_rollouts"] == 2
    assert summary["ci"][0] < summary["lift"] < summary["ci"][1]
    assert summary["by_category"]["action"]["success_decision"]["mean"] == pytest.approx(8 / 3)
    # A failed rollout without extra weight has no lift but lowers the coverage; it counts as 1 in lift_all_failed.
    flat = _record(task, [read, wrong], [1] * 10, False)
    rows = bench.rollout_lifts([*records, flat])
    assert rows[-1] == {"kind": "failed", "category": "action", "weighted": False}
    summary = bench.summarize(rows)
    assert summary["lift"] == pytest.approx(4 / 3) and summary["coverage"] == pytest.approx(2 / 3)
    assert summary["lift_all_failed"]["mean"] == pytest.approx((8 / 3 + 0 + 1) / 3)


@pytest.mark.slow
def test_quick_run_writes_the_schema(tmp_path):
    bench = _load()
    report = bench.main(["--quick", "--out", str(tmp_path), "--results", str(tmp_path / "loc.json")])
    data = json.loads((tmp_path / "loc.json").read_text())
    assert (tmp_path / "loc.png").exists() and data["minutes"] == report["minutes"] < 10
    assert len(data["warm_starts"]) == 3
    for warm in data["warm_starts"]:
        assert set(warm["references"]) == {"oracle", "contrast", "sibling_context", "uniform"}
        uniform = warm["references"]["uniform"]["failed"]["on"]["mean"]
        assert uniform is None or uniform == pytest.approx(1.0)
