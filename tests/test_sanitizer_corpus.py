"""The hostile corpus: every planted secret is masked, benign agent texts stay as they are, and what a provider
receives (the callable's group, the LLM's HTTP request) holds none of the planted values."""

import pytest
import torch
from hostile_corpus import benign_cases, leak_report, planted_cases, strings_of
from openai_server import OpenAIStubServer

from trl_sgcd.references import LiteLLMCreditReference, Sanitizer, ensure_sanitized, resolve_references
from trl_sgcd.siblings import SiblingGroup


torch.set_num_threads(1)
PLANTED = planted_cases()
BENIGN = benign_cases()
SANITIZER = Sanitizer()


def test_corpus_size_and_categories():
    assert len(PLANTED) >= 300 and len(BENIGN) >= 100
    assert {c.category for c in PLANTED} == {"credential", "payment", "account", "email", "phone", "oracle", "answer"}
    assert {b.style for b in BENIGN} == {"airline", "appworld", "bfcl"}
    assert all(sum(b.style == s for b in BENIGN) >= 30 for s in ("airline", "appworld", "bfcl"))


@pytest.mark.parametrize("case", PLANTED, ids=[f"{c.category}:{c.form}:{i}" for i, c in enumerate(PLANTED)])
def test_planted_secret_never_survives(case):
    group = case.group()
    assert all(secret in strings_of(group) for secret in case.secrets)  # the corpus really plants it
    result = SANITIZER.sanitize(group)
    text = strings_of(result.group)
    for secret in case.secrets:
        assert secret.lower() not in text.lower(), (case.form, secret)
    assert result.counts[case.category] > 0  # masked as what it is, not by accident


def test_false_positive_rate_on_benign_agent_texts():
    report = leak_report(SANITIZER)
    assert report["leaks"] == {}
    changed = sum(len(v) for v in report["false_positives"].values())
    assert changed / len(BENIGN) <= 0.05, report["false_positives"]


def test_benign_texts_contain_the_tricky_shapes():
    # The benign corpus is only worth its rate if it holds what naive rules mask.
    text = strings_of([b.messages for b in BENIGN])
    for shape in (
        "Password: must be reset",
        "Evaluation: the cheaper flight",
        "access_token=access_token",
        "password=passwords[",
        "page_token",
        "550e8400-e29b-41d4",
        "basic economy",
        "token of appreciation",
        "boarding pass",
    ):
        assert shape in text, shape


def _provider_groups(cases) -> list[SiblingGroup]:
    groups = []
    for i in range(0, len(cases), 10):
        chunk = cases[i : i + 10]
        base = chunk[0].group()
        siblings = [c.group().siblings[0] for c in chunk] + [base.siblings[1]]
        literals = [lit for c in chunk for lit in c.literals]
        metadata = {"task_id": f"corpus-{i}", "answer_literals": literals}
        for c in chunk:
            metadata.update(c.metadata)
        groups.append(SiblingGroup(prompt=base.prompt, siblings=siblings, metadata=metadata))
    return groups


SAMPLE = PLANTED[::5]


def test_callable_provider_never_sees_a_planted_value():
    seen: list[str] = []

    def provider(group: SiblingGroup) -> str:
        seen.append(strings_of(group))
        return "## State checks\n- read the record first"

    outcome = resolve_references(ensure_sanitized(provider), _provider_groups(SAMPLE), timeout=30)
    assert outcome.failures == 0 and len(seen) == len(_provider_groups(SAMPLE))
    received = "\n".join(seen).lower()
    for case in SAMPLE:
        for secret in case.secrets:
            assert secret.lower() not in received, (case.category, case.form)


def test_llm_prompt_never_carries_a_planted_value(monkeypatch):
    monkeypatch.setenv("SGCD_CORPUS_KEY", "loopback-key")
    with OpenAIStubServer() as server:
        provider = LiteLLMCreditReference(
            "openai/test-model",
            api_base=server.base_url,
            api_key_env="SGCD_CORPUS_KEY",
            num_retries=0,
            max_prompt_chars=200_000,
            max_observation_chars=20_000,
        )
        groups = _provider_groups(SAMPLE)
        resolve_references(provider, groups, timeout=60)
        assert len(server.bodies) == len(groups)
        prompts = "\n".join(m["content"] for body in server.requests for m in body["messages"]).lower()
    assert "sibling" in prompts
    for case in SAMPLE:
        for secret in case.secrets:
            assert secret.lower() not in prompts, (case.category, case.form)
