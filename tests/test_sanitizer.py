"""Sanitizer tests on airline- and AppWorld-like traces (nested JSON, printed Python dicts, free text)."""

import json

import pytest
from openai_server import PLANTED_SECRETS, airline_group

from trl_sgcd.references import CreditReference, Sanitizer, SanitizerConfig, SanitizingProvider, ensure_sanitized
from trl_sgcd.references.base import resolve_references
from trl_sgcd.references.sanitizer import iban_valid, luhn_valid
from trl_sgcd.siblings import Sibling, SiblingGroup


def _dump(group: SiblingGroup) -> str:
    return json.dumps({"prompt": group.prompt, "siblings": [s.messages for s in group.siblings]}, ensure_ascii=False)


def test_checksums():
    assert luhn_valid("4539148803436467")
    assert not luhn_valid("4539148803436468")
    assert not luhn_valid("0000000000000000")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32")


def test_airline_group_masks_every_planted_secret_and_keeps_structure():
    group = airline_group(kinds=("success", "reckless", "transfer"))
    clean, counts = Sanitizer().sanitize_group(group)
    dumped = _dump(clean)
    for secret in PLANTED_SECRETS:
        assert secret not in dumped, secret
    assert "ZFA04Y" not in dumped  # answer literal
    assert "answer_literals" not in clean.metadata
    assert clean.metadata["task_id"] == "task-1"
    # 3 siblings x (email, phone) in the user record
    assert counts["email"] == 3 and counts["phone"] == 3
    assert counts["oracle"] == 2  # the evaluation report in the two reservation reads
    assert counts["credential"] == 6  # api_key inside nested JSON + password= in text, per sibling
    assert counts["answer"] > 0 and counts["payment"] > 0
    # The structure survives: tool results are still valid JSON with the unmasked fields intact.
    record = json.loads(clean.siblings[0].messages[1]["content"])
    assert record["user_id"] == "mia_li_3668"
    assert record["email"] == "<MASKED:EMAIL>"
    assert len(record["payment_methods"]) == 2  # two masked ids as keys do not collide
    nested = json.loads(record["saved_profile"])
    assert nested == {"card": {"number": "<MASKED:PAYMENT>"}, "api_key": "<MASKED:CREDENTIAL>"}
    reservation = json.loads(clean.siblings[0].messages[3]["content"])
    assert reservation["evaluation"] == "<MASKED:ORACLE>" and reservation["cabin"] == "economy"
    # Tool-call arguments are masked as structured data too, and the original group is untouched.
    args = clean.siblings[0].messages[4]["tool_calls"][0]["function"]["arguments"]
    assert args == {"reservation_id": "<MASKED:ANSWER>"}
    assert "ZFA04Y" in _dump(group)
    assert clean.siblings[0].reward == 1.0 and clean.siblings[0].success


def test_masked_values_are_reported_for_credit_masking():
    group = airline_group(kinds=("success", "reckless"))
    result = Sanitizer().sanitize(group)
    assert "ZFA04Y" in result.masked_values
    for secret in ("mia.li3818@example.com", "credit_card_4421486", "hunter2-Airline!"):
        assert secret in result.masked_values
    assert result.total == sum(result.counts.values()) > 0
    # Whole evaluator reports are not literals (they are structures, not values the policy would type).
    assert not any("passed" in v for v in result.masked_values)


def test_appworld_like_code_and_printed_python_dicts():
    code = (
        "token = apis.spotify.login(username='joe.doe@example.org', password='Tr0ub4dor&3')['access_token']\n"
        "print(apis.venmo.show_payment_cards(access_token=token))"
    )
    output = str(
        [
            {"card_id": 81, "card_number": 4024007186349253, "expiry": "11/27", "owner": "Joe"},
            {"card_id": 82, "card_number": "5555555555554444", "bank_account": {"iban": "DE89370400440532013000"}},
        ]
    )
    header = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqb2UifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    sibling = Sibling(
        messages=[
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "execute", "arguments": json.dumps({"code": code})}}
                ],
            },
            {"role": "tool", "name": "execute", "content": output},
            {"role": "tool", "name": "execute", "content": header},
        ],
        reward=0.0,
        success=False,
    )
    clean, counts = Sanitizer().sanitize_group(SiblingGroup(prompt="Pay Joe back.", siblings=[sibling]))
    text = _dump(clean)
    for secret in (
        "joe.doe@example.org",
        "Tr0ub4dor&3",
        "4024007186349253",
        "5555555555554444",
        "DE89370400440532013000",
        "eyJhbGci",
    ):
        assert secret not in text, secret
    # OpenAI-style string arguments stay a JSON string; the printed dict stays a printed dict.
    arguments = clean.siblings[0].messages[0]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str) and "password='<MASKED:CREDENTIAL>'" in json.loads(arguments)["code"]
    assert clean.siblings[0].messages[1]["content"].startswith("[{'card_id': 81")
    assert clean.siblings[0].messages[2]["content"] == "Authorization: Bearer <MASKED:CREDENTIAL>"
    # `access_token=token` passes a variable named like a credential: code, not a secret.
    assert "show_payment_cards(access_token=token)" in json.loads(arguments)["code"]
    assert counts["payment"] == 2 and counts["account"] == 1 and counts["email"] == 1 and counts["credential"] == 2


def test_free_text_contact_data_cards_and_oracle_reports():
    text = (
        "Reach me at jane_roe+travel@mail.example.co.uk or (212) 555-0199, alt +44 20 7946 0958.\n"
        "My card is 4111-1111-1111-1111 but order 1234-5678-9012-3456 is not a card.\n"
        "Evaluator report: task failed, expected 3 items\n"
        "<gold_actions>[cancel_reservation(ZFA04Y)]</gold_actions>\n"
        "Flight on 2024-05-20 at 09:12, price 312. Basic economy cannot be changed, bearer of the ticket."
    )
    masked, counts = Sanitizer().sanitize_text(text)
    assert "jane_roe" not in masked and "555-0199" not in masked and "7946" not in masked
    assert "4111-1111-1111-1111" not in masked
    assert "1234-5678-9012-3456" in masked  # fails the Luhn check
    assert "task failed" not in masked and "cancel_reservation(ZFA04Y)" not in masked
    assert "2024-05-20 at 09:12, price 312. Basic economy cannot be changed, bearer of the" in masked  # prose survives
    assert counts == {"credential": 0, "payment": 1, "account": 0, "email": 1, "phone": 2, "oracle": 2, "answer": 0}


def test_answer_literals_respect_word_boundaries():
    masked, counts = Sanitizer().sanitize_text("The answer is 42 (not 142, 4.2 or 42.5). Paris, paris!", [42, "Paris"])
    assert masked == "The answer is <MASKED:ANSWER> (not 142, 4.2 or 42.5). <MASKED:ANSWER>, <MASKED:ANSWER>!"
    assert counts["answer"] == 3


def test_sanitizing_is_idempotent():
    sanitizer = Sanitizer()
    once, first = sanitizer.sanitize_group(airline_group())
    twice, second = sanitizer.sanitize_group(once)
    assert sum(first.values()) > 0
    assert sum(second.values()) == 0
    assert _dump(once) == _dump(twice)


def test_unparseable_json_fragments_are_masked_as_text():
    truncated = (
        '{"user": {"email": "a.b@example.com", "password": "s3cr3t!!", "gold_actions": [{"name": "cancel", "x": [1, 2]'
    )
    masked, counts = Sanitizer().sanitize_text(truncated)
    assert "a.b@example.com" not in masked and "s3cr3t!!" not in masked and "cancel" not in masked
    assert counts["oracle"] == 1 and counts["credential"] == 1 and counts["email"] == 1


def test_config_controls_keys_and_extra_patterns():
    config = SanitizerConfig(
        account_keys=("member_no",),
        oracle_keys=("hidden_label",),
        extra_patterns={"ticket": (r"\bTKT-\d{6}\b",)},
        mask_phones=False,
    )
    payload = json.dumps({"member_no": "A-17", "hidden_label": {"ok": True}, "note": "TKT-123456, call 212-555-0199"})
    masked, counts = Sanitizer(config).sanitize_text(payload)
    record = json.loads(masked)
    assert record["member_no"] == "<MASKED:ACCOUNT>"
    assert record["hidden_label"] == "<MASKED:ORACLE>"
    assert record["note"] == "<MASKED:TICKET>, call 212-555-0199"
    assert counts["ticket"] == 1 and counts["phone"] == 0


def test_unmodified_json_keeps_its_formatting():
    text = '{\n  "flight_number": "HAT271",\n  "status": "available"\n}'
    masked, counts = Sanitizer().sanitize_text(text)
    assert masked == text and sum(counts.values()) == 0


def test_sanitizing_provider_shields_user_callables():
    seen = []

    def summarize(group: SiblingGroup) -> CreditReference:
        seen.append(_dump(group) + json.dumps(group.metadata))
        return CreditReference(
            text="## State checks\n- check ZFA04Y for mia.li3818@example.com", masked_literals=["4WQ150", "nope"]
        )

    provider = ensure_sanitized(summarize)
    assert isinstance(provider, SanitizingProvider)
    outcome = resolve_references(provider, [airline_group(kinds=("success", "reckless"))])
    reference = outcome.references[0]
    assert outcome.failures == 0 and reference is not None
    assert all(secret not in seen[0] for secret in (*PLANTED_SECRETS, "ZFA04Y"))
    # Whatever the callable repeats is masked again; its literals are kept only when they occur in the rollouts.
    assert "ZFA04Y" not in reference.text and "mia.li3818" not in reference.text
    assert reference.masked_literals[0] == "ZFA04Y" and "4WQ150" in reference.masked_literals
    assert "nope" not in reference.masked_literals
    assert provider.pop_metrics()["sanitizer_hits"] > 0
    assert ensure_sanitized(provider) is provider


@pytest.mark.parametrize("value", [None, True, "", "null"])
def test_non_values_under_sensitive_keys_are_left_alone(value):
    masked, counts = Sanitizer().sanitize_text(json.dumps({"password": value, "x": "sk-test-" + "a" * 20}))
    assert json.loads(masked)["password"] == value
    assert counts["credential"] == 1


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-Zr8K2mQpX4vN7tLw9YbC3dFh",
        "sk-ant-api03-abcdefghijklmnopqrstuv",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1B2" * 9,
        "hf_" + "x9Y8" * 9,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqb2UifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    ],
)
def test_api_keys_in_free_text(secret):
    masked, counts = Sanitizer().sanitize_text(f"config loaded with {secret} at startup")
    assert masked == "config loaded with <MASKED:CREDENTIAL> at startup"
    assert counts["credential"] == 1


def test_url_credentials_keep_the_url_shape():
    masked, _ = Sanitizer().sanitize_text("db at postgres://admin:S3cretPass@db.internal:5432/app")
    assert masked == "db at postgres://admin:<MASKED:CREDENTIAL>@db.internal:5432/app"


def test_native_batch_provider_keeps_its_batch_api_behind_the_sanitizer():
    from trl_sgcd.references import CreditReferenceProvider, ensure_sanitized, resolve_references
    from trl_sgcd.siblings import Sibling, SiblingGroup

    class BatchProvider(CreditReferenceProvider):
        def __init__(self):
            self.batches = []

        async def abuild_many(self, groups):
            self.batches.append([repr(g) for g in groups])
            return ["State checks: ok." for _ in groups[:-1]] + [RuntimeError("last one fails")]

    secret = "jane.roe@example.org"
    groups = [
        SiblingGroup(
            prompt="help",
            siblings=[
                Sibling([{"role": "tool", "name": "lookup", "content": f'{{"email": "{secret}"}}'}], 1.0, True),
                Sibling([{"role": "assistant", "content": "no"}], 0.0, False),
            ],
        )
        for _ in range(3)
    ]
    inner = BatchProvider()
    provider = ensure_sanitized(inner)
    assert provider is not inner and provider.batches_natively
    outcome = resolve_references(provider, groups, timeout=5)
    assert len(inner.batches) == 1 and len(inner.batches[0]) == 3  # one native batch call for the step
    assert all(secret not in seen for seen in inner.batches[0])
    assert [r is not None for r in outcome.references] == [True, True, False]
    assert outcome.failures == outcome.errors == 1


def test_repeated_strings_are_counted_per_occurrence():
    # Each distinct string is masked once per call and repeats replay the result: counts must stay per occurrence.
    secret_text = "Mail mia.li@example.com, card 4111 1111 1111 1111, phone +1 415 555 0134."
    one = SiblingGroup(
        prompt="task",
        siblings=[Sibling([{"role": "tool", "content": secret_text}], 1.0, True)],
    )
    three = SiblingGroup(
        prompt="task",
        siblings=[Sibling([{"role": "tool", "content": secret_text}] * 2, 1.0, True)]
        + [Sibling([{"role": "tool", "content": secret_text}], 0.0, False)],
    )
    single, triple = Sanitizer().sanitize(one), Sanitizer().sanitize(three)
    assert single.total >= 3
    assert {k: 3 * v for k, v in single.counts.items()} == triple.counts
    assert single.masked_values == triple.masked_values
    masked = single.group.siblings[0].messages[0]["content"]
    assert all(m["content"] == masked for s in triple.group.siblings for m in s.messages)
    assert "4111" not in masked and "example.com" not in masked


def test_references_are_read_as_prose():
    # A reference is written by a model from sanitized evidence: its "Answer: ..." lines are guidance, not reports.
    reference = "## State checks\n- Answer: read the reservation first\nExpected output: the refund amount\n"
    sanitizer = Sanitizer()
    assert sanitizer.sanitize_text(reference, prose=True)[0] == reference
    masked, counts = sanitizer.sanitize_text(reference)
    assert counts["oracle"] == 2 and "refund amount" not in masked
    # Values and literals are masked in prose too.
    text, counts = sanitizer.sanitize_text(
        "Answer: use ZFA04Y and pin 4821, password: Hunter2x", ["ZFA04Y"], prose=True
    )
    assert text == "Answer: use <MASKED:ANSWER> and pin <MASKED:CREDENTIAL>, password: <MASKED:CREDENTIAL>"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"oracle_keys": "answer"},
        {"credential_keys": ("password", 3)},
        {"oracle_tags": "gold"},
        {"entropy_limit": float("nan")},
        {"entropy_limit": 9.0},
        {"entropy_limit": "4.5"},
        {"max_literal_chars": -1},
        {"min_literal_chars": 2.5},
        {"extra_patterns": {"ticket": r"TKT-\d+"}},
        {"placeholder": "<MASKED>"},
    ],
)
def test_bad_config_is_refused_at_construction(kwargs):
    with pytest.raises((TypeError, ValueError), match="SanitizerConfig"):
        SanitizerConfig(**kwargs)
