"""`credit_precision_metrics`: the share of a failed rollout's extra weight on its first deviation from the expert."""

import json

import pytest

from trl_sgcd.credit.precision import credit_precision_metrics, deviation_tokens


EXPERT = [
    {"name": "get_reservation", "arguments": {"id": "r1"}},
    {"name": "cancel_reservation", "arguments": {"id": "r1"}},
]


def _row(calls, weights, success=False, answer=True):
    """A rollout whose tokens are `<tool_call> name </tool_call> obs` per call, then `ok .` as the final answer."""
    messages, tokens, trained = [], [], []
    for name, args in calls:
        messages += [
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]},
            {"role": "tool", "content": "{}"},
        ]
        tokens += ["<tool_call>", name, "</tool_call>", "obs"]
        trained += [True, True, True, False]
    if answer:
        messages.append({"role": "assistant", "content": "ok."})
        tokens += ["ok", "."]
        trained += [True, True]
    assert len(weights) == len(tokens)
    return {
        "expert_action": json.dumps(EXPERT),
        "messages": messages,
        "tokens": tokens,
        "weights": weights,
        "credit_mask": trained,
        "success": success,
    }


def test_extra_weight_on_the_wrong_write_is_precise():
    calls = [("get_reservation", {"id": "r1"}), ("cancel_reservation", {"id": "r2"})]
    on_deviation = _row(calls, [1, 1, 1, 1, 2, 2, 2, 1, 1, 1])
    before = _row(calls, [2, 2, 2, 1, 1, 1, 1, 1, 1, 1])
    assert deviation_tokens(EXPERT, on_deviation["messages"], on_deviation["tokens"], on_deviation["credit_mask"]) == [
        *([False] * 4),
        True,
        True,
        True,
        *([False] * 3),
    ]
    metrics = credit_precision_metrics([on_deviation])
    assert metrics["precision"] == 1.0 and metrics["deviation_share"] == pytest.approx(3 / 8)
    assert metrics["lift"] == pytest.approx(8 / 3) and metrics["rollouts"] == 1.0
    assert credit_precision_metrics([before])["precision"] == 0.0
    uniform = _row(calls, [1.5, 1.5, 1.5, 1, 1.5, 1.5, 1.5, 1, 1.5, 1.5])
    assert credit_precision_metrics([uniform])["lift"] == pytest.approx(1.0)
    both = credit_precision_metrics([on_deviation, before])
    assert both["precision"] == pytest.approx(0.5) and both["lift"] == pytest.approx(4 / 3)


def test_stopping_early_deviates_at_the_final_answer_and_unmeasurable_rows_are_skipped():
    stopped = _row([("get_reservation", {"id": "r1"})], [1, 1, 1, 1, 3, 3])
    assert credit_precision_metrics([stopped])["precision"] == 1.0
    # A success, a row without the column, a failure that follows the path, and a row without extra weight: skipped.
    skipped = [
        _row([("get_reservation", {"id": "r1"})], [2, 2, 2, 1, 1, 1], success=True),
        {**stopped, "expert_action": None},
        _row([(c["name"], c["arguments"]) for c in EXPERT], [2] * 10),
        _row([("get_reservation", {"id": "r1"})], [1] * 6),
    ]
    assert credit_precision_metrics(skipped) == {}
