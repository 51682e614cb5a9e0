"""Tests of the LLM-free providers: `ContrastCreditReference` and `SiblingContextReference`."""

import json

import pytest
from openai_server import PLANTED_SECRETS, airline_group

from trl_sgcd.references import (
    ContrastCreditReference,
    CreditReferenceProvider,
    SiblingContextReference,
    parse_credit_reference,
    resolve_references,
    tool_sequence,
)
from trl_sgcd.references.alignment import ToolStep, common_subsequence, path_deviation
from trl_sgcd.siblings import Sibling, SiblingGroup


def _call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _sections(text: str) -> dict[str, str]:
    parsed = parse_credit_reference(text)
    out = {}
    for block in ("\n" + parsed.text).split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        out[title] = body
    return out


def test_airline_contrast_describes_order_deviations_and_failure_only_calls():
    group = airline_group(kinds=("success", "reckless", "success", "transfer", "wrong_id"))
    provider = ContrastCreditReference()
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
    assert "Before acting, every success checks: `get_user_details(" in sections["State checks"]
    assert "`get_reservation_details(" in sections["State checks"]
    assert "1. `get_user_details(" in sections["Successful branches"]
    assert "3. `cancel_reservation(" in sections["Successful branches"]
    assert "get_user_details → get_reservation_details → cancel_reservation" in sections["Successful branches"]
    failed = sections["Failed branches and why"]
    assert "get_user_details → cancel_reservation; " in failed and "never calls `get_reservation_details`" in failed
    assert "calls no success makes: `transfer_to_human_agents(" in failed
    assert "Tools only failures use: `transfer_to_human_agents`" in failed
    deviations = sections["Deviation points"]
    assert "Most failures (2 of 3) first deviate at step 2." in deviations
    assert "Sibling 2: step 2 calls `cancel_reservation` with other arguments than sibling 1 (success)" in deviations
    assert "Sibling 4: step 3 calls `transfer_to_human_agents(" in deviations
    assert "where sibling 1 (success) next writes `cancel_reservation(" in deviations
    assert "Sibling 5: step 2 reads `get_reservation_details(" in deviations and "never reads" in deviations
    prefix = _sections(ContrastCreditReference(deviation_rule="prefix").build(group).text)["Deviation points"]
    assert "Sibling 2: step 2 calls `cancel_reservation(" in prefix
    assert "Sibling 5: step 2 calls `get_reservation_details` with other arguments" in prefix
    # Sanitized evidence only; the raw values go to masked_literals for the credit mask.
    for secret in (*PLANTED_SECRETS, "ZFA04Y"):
        assert secret not in reference.text
    assert reference.masked_literals[0] == "ZFA04Y"
    assert "credit_card_4421486" in reference.masked_literals
    metrics = provider.pop_metrics()
    assert (
        metrics["calls"] == 1 and metrics["sanitizer_hits"] > 0 and metrics["reference_chars"] == len(reference.text)
    )
    assert provider.pop_metrics() == {}


def test_contrast_is_deterministic():
    group = airline_group(kinds=("reckless", "success", "transfer", "success"))
    first, second = ContrastCreditReference().build(group), ContrastCreditReference().build(group)
    assert first.text == second.text and first.masked_literals == second.masked_literals


def test_success_only_write_values_are_masked_abstractly():
    def sibling(flight, success):
        return Sibling(
            messages=[
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [_call("search_direct_flight", origin="SFO", destination="JFK")],
                },
                {
                    "role": "tool",
                    "name": "search_direct_flight",
                    "content": '[{"flight": "HAT123"}, {"flight": "HAT456"}]',
                },
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {
                                "name": "book_reservation",
                                "arguments": json.dumps({"flight": flight, "cabin": "economy"}),
                            },
                        }
                    ],
                },
                {"role": "tool", "name": "book_reservation", "content": "ok"},
                {"role": "assistant", "content": "Booked."},
            ],
            reward=float(success),
            success=success,
        )

    group = SiblingGroup(
        prompt="Book the cheapest flight.", siblings=[sibling("HAT123", True), sibling("HAT456", False)]
    )
    reference = ContrastCreditReference().build(group)
    literals_section = _sections(reference.text)["Literals to mask"]
    assert "`book_reservation.flight`" in literals_section and "HAT123" not in literals_section
    assert reference.masked_literals == ["HAT123"]  # "economy" is written by the failure too; reads are not masked
    assert "step 2 calls `book_reservation` with other arguments" in reference.text
    assert ContrastCreditReference(mask_success_write_values=False).build(group).masked_literals == []


def test_failure_with_the_successful_calls_differs_in_its_final_message():
    group = airline_group(kinds=("success", "success"))
    group.siblings[1] = Sibling(messages=group.siblings[1].messages[:-1], reward=0.0, success=False)
    reference = ContrastCreditReference().build(group)
    assert "follows the path of sibling 1 (success); it differs only in its final message." in reference.text
    prefix = ContrastCreditReference(deviation_rule="prefix").build(group).text
    assert "makes exactly the calls of sibling 1 (success); it differs only in its final message." in prefix
    assert "makes the same calls as a success; the failure is in the final message" in reference.text


def test_non_mixed_and_empty_groups_get_no_reference():
    provider = ContrastCreditReference()
    all_success = airline_group(kinds=("success", "success"))
    empty = SiblingGroup(
        prompt="x",
        siblings=[
            Sibling(messages=[{"role": "assistant", "content": ""}], reward=r, success=bool(r)) for r in (1.0, 0.0)
        ],
    )
    outcome = resolve_references(provider, [all_success, empty, airline_group()])
    assert outcome.references[0] is None and outcome.references[1] is None and outcome.references[2] is not None
    assert outcome.empty == 2 and outcome.errors == 0
    metrics = provider.pop_metrics()
    assert metrics["calls"] == 3 and metrics["skipped"] == 2


def test_single_turn_groups_contrast_answer_shape():
    def sibling(text, success):
        return Sibling(messages=[{"role": "assistant", "content": text}], reward=float(success), success=success)

    good = "12 apples minus 5 leaves 7.\nFinal answer: 7"
    bad = " ".join(["Let me think about apples and oranges and how many there could be."] * 6)
    group = SiblingGroup(
        prompt="How many apples are left?", siblings=[sibling(good, True), sibling(bad, False), sibling(good, True)]
    )
    reference = ContrastCreditReference().build(group)
    sections = _sections(reference.text)
    assert "No sibling calls a tool" in sections["State checks"]
    assert "an explicit final-answer line" in sections["Successful branches"]
    assert "Mostly the successes end with an explicit final-answer line." in sections["Deviation points"]
    assert "Failed answers are longer" in sections["Deviation points"]


def test_tool_sequence_and_common_subsequence():
    sibling = airline_group(kinds=("success",)).siblings[0]
    steps = tool_sequence(sibling)
    assert [s.name for s in steps] == ["get_user_details", "get_reservation_details", "cancel_reservation"]
    assert steps[2].args == '{"reservation_id": "ZFA04Y"}'
    assert common_subsequence([list("abcde"), list("xabde"), list("abzde")]) == list("abde")
    assert common_subsequence([]) == []


def test_reference_length_is_capped():
    group = airline_group(kinds=("success", "reckless", "transfer", "wrong_id", "success"))
    reference = ContrastCreditReference(max_reference_chars=600).build(group)
    assert len(reference.text) <= 600 and reference.text.startswith("## State checks")


def test_sibling_context_shows_sanitized_successes_only():
    group = airline_group(kinds=("reckless", "success", "transfer", "success"), pad=100)
    provider = SiblingContextReference(max_chars=3_000, max_successes=1)
    reference = provider.build(group)
    assert reference.text.startswith("Successful sibling rollout(s)")
    assert "SUCCESS" in reference.text and "FAILURE" not in reference.text
    assert "transfer_to_human_agents" not in reference.text
    assert len(reference.text) <= 3_000
    for secret in (*PLANTED_SECRETS, "ZFA04Y"):
        assert secret not in reference.text
    assert "ZFA04Y" in reference.masked_literals
    assert provider.build(airline_group(kinds=("reckless", "transfer"))) is None


def test_path_rule_lets_reads_come_in_any_order_and_names_the_first_off_path_call():
    def step(name, **args):
        return ToolStep(name=name, args=json.dumps(args, sort_keys=True), raw_args=args)

    user, res, cancel = (
        step("get_user", id="u1"),
        step("get_reservation", id="r1"),
        step("cancel_reservation", id="r1"),
    )
    path = [user, res, cancel]
    assert path_deviation(path, [res, user, res, cancel], is_read) is None  # reads reordered and repeated
    assert path_deviation(path, [res, cancel], is_read) == 1  # write before the read of the user
    assert path_deviation(path, [user, res], is_read) == 2  # stops early
    assert path_deviation(path, [user, step("get_reservation", id="r2")], is_read) == 1
    assert path_deviation(path, [user, res, step("cancel_reservation", id="r2")], is_read) == 2

    def sibling(steps, success):
        calls = [{"role": "assistant", "content": "", "tool_calls": [_call(s.name, **s.raw_args)]} for s in steps]
        return Sibling(
            messages=[*calls, {"role": "assistant", "content": "Done."}], reward=float(success), success=success
        )

    # Reads in the other order, then a wrong write: the prefix rule blames step 1, the path rule step 3.
    group = SiblingGroup(
        prompt="Cancel r1.",
        siblings=[sibling(path, True), sibling([res, user, step("cancel_reservation", id="r9")], False)],
    )
    path_text = ContrastCreditReference().build(group).text
    prefix_text = ContrastCreditReference(deviation_rule="prefix").build(group).text
    assert "Sibling 2: step 3 calls `cancel_reservation` with other arguments than sibling 1 (success)" in path_text
    assert "Sibling 2: step 1 calls" in prefix_text
    with pytest.raises(ValueError, match="deviation_rule"):
        ContrastCreditReference(deviation_rule="closest")


def is_read(name):
    return name.startswith("get")
