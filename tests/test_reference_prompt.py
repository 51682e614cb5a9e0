"""Tests of the Table 5 prompt, the long-context fallback and the tolerant reply parser."""

import json

import pytest
from openai_server import VALID_REFERENCE, airline_group

from trl_sgcd.references import (
    PROMPT_VERSION,
    ROLE,
    SECTION_KEYS,
    CreditReferenceError,
    Sanitizer,
    build_credit_prompt,
    compose_credit_prompt,
    format_credit_reference,
    parse_credit_reference,
    render_sibling,
    select_siblings,
)
from trl_sgcd.siblings import Sibling, SiblingGroup


def _sibling(success: bool, n_chars: int, tag: str) -> Sibling:
    """A rollout whose rendering length grows with `n_chars` (one tool call with a long observation)."""
    return Sibling(
        messages=[
            {
                "role": "assistant",
                "content": f"step {tag}",
                "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"q": tag}}}],
            },
            {"role": "tool", "name": "lookup", "content": "o" * n_chars},
            {"role": "assistant", "content": f"done {tag}"},
        ],
        reward=1.0 if success else 0.0,
        success=success,
    )


def test_prompt_follows_table5():
    group, _ = Sanitizer().sanitize_group(airline_group(kinds=("success", "reckless", "transfer")))
    messages = build_credit_prompt(group)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == ROLE
    assert ROLE.startswith("You are a training-time credit analyst.")
    user = messages[1]["content"]
    assert "[task-1] Hi, I am mia_li_3668" in user
    assert "cancel only with insurance" in user  # the agent's instructions travel with the task
    assert "Sibling 1: SUCCESS (reward 1)" in user and "Sibling 2: FAILURE (reward 0)" in user
    assert "Sibling 3: FAILURE" in user
    assert "1 succeeded and 2 failed" in user
    assert "Use only information present in the visible traces." in user
    assert "Do not quote hidden labels, evaluator reports, credentials, or final answer literals." in user
    assert "Prefer abstract state checks and action choices" in user
    headers = [
        "## State checks",
        "## Successful branches",
        "## Failed branches and why",
        "## Deviation points",
        "## Literals to mask",
    ]
    positions = [user.index(h) for h in headers]
    assert positions == sorted(positions)
    assert "<MASKED:EMAIL>" in user and "ZFA04Y" not in user
    assert PROMPT_VERSION


def test_render_sibling_is_compact_and_truncates_observations():
    sibling = airline_group(kinds=("success",), pad=5_000).siblings[0]
    text = render_sibling(sibling, max_observation_chars=300, index=4)
    lines = text.splitlines()
    assert lines[0] == "### Sibling 4: SUCCESS (reward 1), 3 tool calls"
    assert '  [1] get_user_details(user_id="mia_li_3668")' in lines
    assert '  [3] cancel_reservation(reservation_id="ZFA04Y")' in lines
    observations = [ln for ln in lines if ln.startswith("  => ")]
    assert len(observations) == 3
    assert all(len(ln) <= 300 + len("  => get_reservation_details: ") for ln in observations)
    assert "chars]" in observations[1]  # says how much was dropped
    assert len(render_sibling(sibling, max_observation_chars=10_000)) > 5_000


def test_prompt_messages_repeated_in_the_transcript_are_not_rendered_twice():
    group = airline_group(kinds=("success", "reckless"))
    with_prompt = [
        Sibling(messages=[*group.prompt, *s.messages], reward=s.reward, success=s.success) for s in group.siblings
    ]
    user = build_credit_prompt(SiblingGroup(prompt=group.prompt, siblings=with_prompt))[1]["content"]
    assert user.count("Please cancel my trip") == 1


def test_everything_fits_shows_every_sibling():
    group = SiblingGroup(prompt="t", siblings=[_sibling(i % 2 == 0, 100, str(i)) for i in range(4)])
    selection = select_siblings(group, budget_chars=10_000)
    assert selection.indices == [0, 1, 2, 3] and not selection.fallback


def test_fallback_more_successes_keeps_failures_and_shortest_successes():
    lengths_success = [900, 300, 700, 200, 800, 500]
    siblings = [_sibling(True, n, f"s{n}") for n in lengths_success] + [
        _sibling(False, 400, "f1"),
        _sibling(False, 600, "f2"),
    ]
    group = SiblingGroup(prompt="t", siblings=siblings)
    selection = select_siblings(group, budget_chars=2_600, max_observation_chars=1_000)
    assert selection.fallback
    chosen = [group.siblings[i] for i in selection.indices]
    assert sorted(i for i in selection.indices if not group.siblings[i].success) == [
        6,
        7,
    ]  # the smaller class, all of it
    success_lengths = sorted(len(s.messages[1]["content"]) for s in chosen if s.success)
    assert success_lengths == [200, 300]  # matched one to one, shortest first
    assert selection.observation_chars == 1_000 and selection.chars <= 2_600


def test_fallback_more_failures_keeps_successes_and_longest_failures():
    siblings = [_sibling(False, n, f"f{n}") for n in (100, 900, 400, 700, 50)] + [_sibling(True, 300, "s1")]
    group = SiblingGroup(prompt="t", siblings=siblings)
    selection = select_siblings(group, budget_chars=1_500, max_observation_chars=1_000)
    assert selection.fallback
    assert selection.indices == [1, 5]  # the longest failure and the only success, in group order
    rendered = "\n\n".join(selection.renderings)
    assert "Sibling 2: FAILURE" in rendered and "Sibling 6: SUCCESS" in rendered


def test_fallback_truncates_observations_then_drops_pairs():
    siblings = [_sibling(True, 3_000, f"s{i}") for i in range(3)] + [_sibling(False, 3_000, f"f{i}") for i in range(3)]
    group = SiblingGroup(prompt="t", siblings=siblings)
    # All three pairs fit once observations are cut.
    shrunk = select_siblings(group, budget_chars=2_400, max_observation_chars=3_000)
    assert len(shrunk.indices) == 6 and shrunk.observation_chars < 3_000 and shrunk.chars <= 2_400
    # A tighter budget drops matched pairs, never below one success and one failure.
    tight = select_siblings(group, budget_chars=700, max_observation_chars=3_000)
    outcomes = [group.siblings[i].success for i in tight.indices]
    assert 2 <= len(outcomes) < 6 and outcomes.count(True) == outcomes.count(False)
    assert tight.chars <= 700
    tiny = select_siblings(group, budget_chars=300, max_observation_chars=3_000)
    assert len(tiny.indices) == 2 and tiny.truncated and tiny.chars <= 300
    assert [group.siblings[i].success for i in tiny.indices] == [True, False]


def test_prompt_respects_its_character_budget():
    group, _ = Sanitizer().sanitize_group(airline_group(kinds=("success",) * 5 + ("reckless", "transfer"), pad=6_000))
    for max_chars in (4_000, 12_000, 60_000):
        prompt = compose_credit_prompt(group, max_chars=max_chars)
        assert prompt.chars <= max_chars
        shown = [group.siblings[i].success for i in prompt.selection.indices]
        assert True in shown and False in shown
    assert compose_credit_prompt(group, max_chars=12_000).selection.fallback
    assert "long-context fallback" in compose_credit_prompt(group, max_chars=12_000).messages[1]["content"]
    with pytest.raises(ValueError, match="max_chars"):
        build_credit_prompt(group, max_chars=3_000)


def test_parse_canonical_reference():
    reference = parse_credit_reference(VALID_REFERENCE)
    assert reference.metadata["sections"] == list(SECTION_KEYS)
    assert reference.masked_literals == ["<MASKED:PAYMENT>", "reservation id"]
    assert reference.text.startswith("## State checks\n- Look up the reservation")
    assert parse_credit_reference(reference.text).text == reference.text  # the canonical form is a fixed point


@pytest.mark.parametrize(
    "reply",
    [
        "**1. State checks:** read the reservation\n**2. Successful branches:** cancel after the check\n"
        "**3. Failed branches and why:** cancel blindly\n**4. Deviation points:** step 2\n**5. Literals to mask:** `ZFA04Y`, `4WQ150`",
        "STATE CHECKS\n- read the reservation\nSUCCESSFUL BRANCHES\n- cancel after the check\nFailed Branches And Why\n"
        '1. Failures skip the status check: they cancel blindly\nDeviation Points\n- step 2\nLiterals To Mask\n- `ZFA04Y`\n- "4WQ150"',
        "# Credit reference\n### (1) State checks that successful siblings establish\n- read the reservation\n"
        "### (2) Reusable successful action branches\n1. State check first\n2. Failed attempts skip it\n"
        "### (3) Failed branches and why they appear wrong\n- cancel blindly\n### (4) Likely deviation points\n- step 2\n"
        "### (5) Literals or values that should remain masked during credit scoring\n- ZFA04Y (reservation id)\n- 4WQ150",
        "```markdown\n1. State checks\n- read the reservation\n2. Successful branches\n- cancel after the check\n"
        "3. Failed branches\n- cancel blindly\n4. Deviation points\n- step 2\n5. Literals to mask\n- ZFA04Y\n- 4WQ150\n```",
        json.dumps(
            {
                "state_checks": ["read the reservation"],
                "successful_branches": "cancel after the check",
                "failed_branches_and_why": [{"branch": "cancel blindly", "why": "no insurance check"}],
                "deviation_points": ["step 2"],
                "literals_to_mask": ["ZFA04Y", "4WQ150"],
            }
        ),
        "```json\n"
        + json.dumps(
            {
                "credit_reference": {
                    "State checks": "read the reservation",
                    "Successful branches": "cancel after the check",
                    "Failed branches": "cancel blindly",
                    "Deviation points": "step 2",
                    "Literals to mask": ["ZFA04Y", "4WQ150"],
                }
            }
        )
        + "\n```",
    ],
    ids=["bold-numbered", "caps-plain", "md-long-titles", "fenced-numbered", "json", "json-nested-fenced"],
)
def test_parse_tolerates_formatting_drift(reply):
    reference = parse_credit_reference(reply)
    assert reference.metadata["sections"] == list(SECTION_KEYS)
    assert reference.masked_literals == ["ZFA04Y", "4WQ150"]
    assert "read the reservation" in reference.text and "cancel blindly" in reference.text
    sections = reference.text.split("\n\n## ")
    assert len(sections) == 5
    # A numbered item that mentions failures stays inside its section.
    if "Failed attempts skip it" in reply:
        assert "2. Failed attempts skip it" in sections[1]


def test_literals_none_gives_no_literals():
    reply = "## State checks\n- a\n## Successful branches\n- b\n## Failed branches and why\n- c\n## Literals to mask\n- none"
    reference = parse_credit_reference(reply)
    assert reference.masked_literals == []
    assert "deviation_points" not in reference.metadata["sections"]


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "   \n",
        "I am sorry, but I cannot help with that request.",
        "## State checks\n- a\n## Literals to mask\n- x",
        "## State checks\n\n## Successful branches\n\n## Failed branches and why\n- none\n## Deviation points\n",
        '{"answer": "the reservation should be cancelled"}',
        '```json\n{"state_checks": "a", "successful_branches": ',
    ],
)
def test_unparseable_replies_raise(reply):
    with pytest.raises(CreditReferenceError):
        parse_credit_reference(reply)


def test_format_leaves_out_missing_sections():
    text = format_credit_reference({"deviation_points": "- step 3", "state_checks": "- check"})
    assert text == "## State checks\n- check\n\n## Deviation points\n- step 3"
