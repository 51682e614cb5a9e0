"""Tests of `OracleCreditReference`: the scripted expert's path and where each failure leaves it."""

import copy

from trl_sgcd.envs.offline_airline import expert_conversation, first_deviation, make_task
from trl_sgcd.references import CreditReferenceProvider, OracleCreditReference, parse_credit_reference
from trl_sgcd.references.oracle import group_task
from trl_sgcd.siblings import Sibling, SiblingGroup


def _rebook_task():
    return next(t for s in range(1, 200) if (t := make_task("rebook", s)) is not None)


def _sibling(calls, answer, success):
    messages = []
    for name, arguments in calls:
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": name, "content": "{}"},
        ]
    messages.append({"role": "assistant", "content": answer})
    return Sibling(messages=messages, reward=float(success), success=success)


def _sections(text):
    out = {}
    for block in ("\n" + parse_credit_reference(text).text).split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        out[title] = body
    return out


def _group(task):
    expert = [(c["name"], c["arguments"]) for c in task["actions"]]
    book = copy.deepcopy(expert[3][1])
    book["flight_id"] = "F999"
    success = Sibling(messages=expert_conversation(task)[2:], reward=1.0, success=True)
    siblings = [
        success,
        _sibling([expert[0], expert[1], expert[2], ("book_flight", book)], "Booked.", False),  # wrong flight
        _sibling([expert[1]], "Cancelled.", False),  # writes before reading
        _sibling([expert[0], ("get_reservation", {"reservation_id": "r999"})], "Done.", False),  # wrong read
        _sibling([expert[0], expert[1]], "Cancelled.", False),  # stops early
        _sibling(expert, "All done.", False),  # right calls, facts missing
    ]
    return SiblingGroup(prompt=task["request"], siblings=siblings, metadata={"task_id": task["task_id"]})


def test_oracle_states_the_expert_path_and_each_deviation():
    task = _rebook_task()
    group = _group(task)
    provider = OracleCreditReference()
    assert isinstance(provider, CreditReferenceProvider)
    reference = provider.build(group)
    sections = _sections(reference.text)
    assert list(sections) == [
        "State checks",
        "Successful branches",
        "Failed branches and why",
        "Deviation points",
        "Literals to mask",
    ]
    rid = task["actions"][0]["arguments"]["reservation_id"]
    assert f'1. `get_reservation(reservation_id="{rid}")`' in sections["Successful branches"]
    assert "4. `book_flight(" in sections["Successful branches"]
    deviations = sections["Deviation points"]
    assert "Sibling 2: step 4 calls `book_flight` with other arguments than the expert" in deviations
    assert f'Sibling 3: step 1 writes `cancel_reservation(reservation_id="{rid}")` before checking' in deviations
    assert (
        'Sibling 4: step 2 reads `get_reservation(reservation_id="r999")`, which the expert never reads' in deviations
    )
    assert (
        "Sibling 5: stops after step 2 (final message) where the expert continues with `search_flights(" in deviations
    )
    assert "Sibling 6: makes the expert's calls (steps 1–4); it goes wrong in its final message." in deviations
    assert "Most failures" not in deviations  # five failures, five different steps
    group.siblings.append(group.siblings[1])
    assert "- Most failures (2 of 6) leave the expert's path at step 4." in OracleCreditReference().build(group).text
    # Literal masking: the found flight and the answer facts never appear; they go to masked_literals.
    flight = task["actions"][3]["arguments"]["flight_id"]
    assert flight not in reference.text and "<book_flight.flight_id>" in reference.text
    assert "`book_flight.flight_id`" in sections["Literals to mask"]
    assert flight in reference.masked_literals
    for fact in task["required_facts"]:
        assert fact not in reference.text
    metrics = provider.pop_metrics()
    assert metrics["calls"] == 1 and metrics["reference_chars"] == len(reference.text)


def test_oracle_deviation_steps_match_first_deviation():
    task = _rebook_task()
    group = _group(task)
    reference = OracleCreditReference().build(group)
    for i, sibling in enumerate(group.siblings[1:], start=2):
        calls = [c["function"] for m in sibling.messages for c in m.get("tool_calls") or []]
        dev = first_deviation(task, calls)
        line = next(ln for ln in reference.text.splitlines() if ln.startswith(f"- Sibling {i}:"))
        if dev is None:
            assert "final message" in line
        elif dev == len(calls):
            assert f"stops after step {dev} " in line
        else:
            assert f"step {dev + 1} " in line


def test_oracle_needs_a_task_and_a_mixed_group():
    task = _rebook_task()
    group = _group(task)
    provider = OracleCreditReference()
    assert provider.build(SiblingGroup(prompt="x", siblings=group.siblings)) is None
    assert provider.build(SiblingGroup(prompt="x", siblings=group.siblings[:1], metadata=group.metadata)) is None
    assert provider.pop_metrics()["skipped"] == 2
    assert group_task(SiblingGroup(prompt="x", siblings=[], metadata={"task": task}))["task_id"] == task["task_id"]
    assert group_task(SiblingGroup(prompt="x", siblings=[], metadata={"task_id": "nope-1"})) is None
