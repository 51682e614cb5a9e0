"""Nothing secret at rest: API-key values are scrubbed wherever provider text goes, and the cache holds only finalized,
masked references. The echo test trains against a loopback LLM whose replies and errors repeat planted secrets and the
API keys, then searches the reference cache, the credit dumps and everything logged or printed."""

import json
import logging

import pytest
from openai_server import PLANTED_SECRETS, VALID_REFERENCE, Fault, OpenAIStubServer, request_key

from trl_sgcd.references import (
    CreditReference,
    LiteLLMCreditReference,
    as_provider,
    ensure_sanitized,
    resolve_references,
)
from trl_sgcd.references.keys import KEY_PLACEHOLDER, is_key_name, known_keys, scrub_keys
from trl_sgcd.siblings import Sibling, SiblingGroup


KEY_ENV = "SGCD_ECHO_LLM_KEY"
API_KEY = "plain words as a key 7"  # no known key format: only its value can find it
LITELLM_KEY = "own-variable-value-41"  # in litellm's own OPENAI_API_KEY
TOKEN = "extra-token-value-93"  # passed to litellm in `extra_kwargs`
KEYS = (API_KEY, LITELLM_KEY, TOKEN)


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", LITELLM_KEY)


def _group(i: int, text: str = "") -> SiblingGroup:
    return SiblingGroup(
        prompt=f"task {i} {text}",
        siblings=[Sibling([{"role": "assistant", "content": "ok"}], 1.0, True), Sibling([], 0.0, False)],
    )


def test_which_environment_variables_hold_keys(monkeypatch):
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "HF_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "MY_APIKEY",
    ):
        assert is_key_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "HF_TOKEN_PATH", "OPENAI_API_BASE", "KEYBOARD", "SSH_AUTH_SOCK", "HOME"):
        assert not is_key_name(name), name
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to scrub without mangling text
    monkeypatch.setenv("ODD_NAME", "value-of-an-odd-name")
    keys = known_keys(["ODD_NAME"], [TOKEN, 42])
    assert {API_KEY, LITELLM_KEY, TOKEN, "value-of-an-odd-name"} <= set(keys) and "abc" not in keys
    text, count = scrub_keys(f"a {TOKEN} and {TOKEN}", keys)
    assert text == f"a {KEY_PLACEHOLDER} and {KEY_PLACEHOLDER}" and count == 2


def test_user_provider_references_and_errors_are_scrubbed(monkeypatch):
    monkeypatch.setenv("SERVICE_TOKEN", TOKEN)

    def provider(group):
        if group.prompt.startswith("task 0"):
            raise RuntimeError(f"the service refused token {TOKEN} (long message {'x' * 400})")
        return f"State checks: call with {TOKEN} first."

    outcome = resolve_references(ensure_sanitized(provider), [_group(i) for i in range(2)], timeout=10)
    assert outcome.errors == 1 and TOKEN not in outcome.error_messages[0]
    assert KEY_PLACEHOLDER in outcome.error_messages[0] and len(outcome.error_messages[0]) <= 300
    assert TOKEN not in outcome.references[1].text and KEY_PLACEHOLDER in outcome.references[1].text
    # A raw (unwrapped) provider's error messages are scrubbed too.
    outcome = resolve_references(as_provider(provider), [_group(0)], timeout=10)
    assert TOKEN not in outcome.error_messages[0]


def _echo(body) -> str:
    """A reply that repeats the planted secrets, the keys and an authorization header."""
    lines = [f"- `{value}`" for value in (*PLANTED_SECRETS, *KEYS)]
    return VALID_REFERENCE + "\n".join(lines) + f"\n- Authorization: Bearer {API_KEY}\n"


def _plan(body, attempt):
    key = request_key(body) or "task-1"
    return Fault("401" if int(key.split("-")[1]) % 2 == 0 else "ok")  # 401 errors echo the bearer token


def _echo_prompt(i: int) -> list[dict[str, str]]:
    email, phone, card_id, gift_id, card, api_key, password, gold = PLANTED_SECRETS
    profile = (
        f"[task-{i}] I am Mia ({email}, {phone}), card {card}, payment {card_id} or {gift_id}, "
        f"login password={password} , old key {api_key}\n" + json.dumps({"expected_answer": gold})
    )
    return [{"role": "system", "content": "You are an airline agent."}, {"role": "user", "content": profile}]


@pytest.mark.filterwarnings("ignore:Item 'summary' on TypedDict:UserWarning")
def test_echoed_secrets_and_keys_reach_no_cache_dump_or_log(tiny_model_path, tmp_path, caplog, capfd):
    pytest.importorskip("litellm")
    from datasets import Dataset

    from trl_sgcd import SGCDConfig, SGCDGRPOTrainer

    caplog.set_level(logging.DEBUG)
    cache_dir = tmp_path / "cache"
    with OpenAIStubServer(reply=_echo, plan=_plan) as server:
        provider = LiteLLMCreditReference(
            "openai/test-model",
            api_base=server.base_url,
            api_key_env=KEY_ENV,
            timeout=10.0,
            num_retries=0,
            cache_dir=cache_dir,
            extra_kwargs={"azure_ad_token": TOKEN},
        )
        args = SGCDConfig(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=16,
            max_steps=2,
            report_to="none",
            use_cpu=True,
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
            seed=7,
            dynamic_sampling=False,
            credit_log_steps=1,
        )
        dataset = Dataset.from_list([{"prompt": _echo_prompt(i)} for i in range(16)])

        def parity_reward(completions, **kwargs):
            return [float(len(c[0]["content"]) % 2 == 0) for c in completions]

        trainer = SGCDGRPOTrainer(
            model=tiny_model_path,
            reward_funcs=parity_reward,
            args=args,
            train_dataset=dataset,
            credit_reference=provider,
        )
        trainer.train()
        sent = "\n".join(server.bodies)
        kinds = dict(server.kind_counts)
    captured = capfd.readouterr()
    assert kinds.get("ok", 0) >= 1 and kinds.get("401", 0) >= 1, kinds  # both paths ran
    for value in (API_KEY, LITELLM_KEY):  # the prompt the LLM received (the token is a request parameter)
        assert value not in sent, value
    cached = "\n".join(p.read_text() for p in sorted(cache_dir.glob("*/*.json")))
    dumps = "\n".join(p.read_text() for p in sorted((tmp_path / "out" / "sgcd_credit").glob("*.jsonl")))
    assert cached and dumps
    assert KEY_PLACEHOLDER in cached  # the reply's keys were scrubbed before caching, not merely absent
    assert "Incorrect API key provided" in caplog.text  # the 401 error was logged, scrubbed
    places = {"cache": cached, "dumps": dumps, "logs": caplog.text, "stdout": captured.out, "stderr": captured.err}
    for where, text in places.items():
        for value in (*PLANTED_SECRETS, *KEYS):
            assert value not in text, (where, value)


def test_oversized_replies_are_rejected_uncached(tmp_path):
    pytest.importorskip("litellm")
    for bad in (0, -1, 1.5, True, "100"):
        with pytest.raises(ValueError, match="max_reply_chars"):
            LiteLLMCreditReference("openai/test-model", max_reply_chars=bad)
    big = VALID_REFERENCE + "- padding line\n" * 200
    with OpenAIStubServer(reply=big) as server:
        options = dict(api_base=server.base_url, api_key_env=KEY_ENV, num_retries=0, cache_dir=tmp_path)
        provider = LiteLLMCreditReference("openai/test-model", max_reply_chars=len(big) - 1, **options)
        groups = [_group(i, "[task-1]") for i in range(2)]
        outcome = resolve_references(provider, groups, timeout=30)
        metrics = provider.pop_metrics()
        assert outcome.errors == 2 and metrics["failures_oversize"] == 2 and metrics["references"] == 0
        assert all("max_reply_chars" in m for m in outcome.error_messages)
        assert list(tmp_path.glob("*/*.json")) == []
        fits = LiteLLMCreditReference("openai/test-model", max_reply_chars=len(big), **options)
        assert resolve_references(fits, groups, timeout=30).failures == 0
        record = next(tmp_path.glob("*/*.json")).read_text()
        assert "reference" in record and "padding line" in record


def test_cache_records_hold_no_literal_the_sanitizer_masked(tmp_path):
    pytest.importorskip("litellm")
    from openai_server import airline_group

    reply = VALID_REFERENCE + "- `ZFA04Y`\n- `4WQ150`\n"
    with OpenAIStubServer(reply=reply) as server:
        options = dict(api_base=server.base_url, api_key_env=KEY_ENV, num_retries=0, cache_dir=tmp_path)
        first = resolve_references(LiteLLMCreditReference("openai/test-model", **options), [airline_group()])
        again = resolve_references(LiteLLMCreditReference("openai/test-model", **options), [airline_group()])
        assert server.request_count == 1  # the second came from the cache
    (record,) = [p.read_text() for p in tmp_path.glob("*/*.json")]
    assert "ZFA04Y" not in record  # an answer literal: never at rest
    for secret in PLANTED_SECRETS:
        assert secret not in record
    reference, cached = first.references[0], again.references[0]
    assert isinstance(cached, CreditReference) and cached.metadata["cache_hit"]
    assert cached.text == reference.text and cached.masked_literals == reference.masked_literals
    assert "ZFA04Y" in cached.masked_literals  # recomputed from the group, not read from disk


def test_credit_dumps_mask_environment_keys_of_any_format():
    from trl_sgcd.references import mask_credit_record

    tokens = ["the ", "key ", "is ", API_KEY[:5], API_KEY[5:], " ok"]  # split across tokens, as a tokenizer would
    record = {
        "messages": [{"role": "assistant", "content": f"printing env: {API_KEY}"}],
        "metadata": {"note": f"{LITELLM_KEY}"},
        "reference": f"do not reuse {API_KEY}",
        "tokens": tokens,
        "weights": [1.0] * len(tokens),
    }
    masked = mask_credit_record(record)
    dumped = str(masked)
    assert API_KEY not in dumped and LITELLM_KEY not in dumped
    assert masked["tokens"][:3] == tokens[:3] and masked["tokens"][-1] == " ok" and len(masked["tokens"]) == 6
    assert KEY_PLACEHOLDER in masked["reference"] and KEY_PLACEHOLDER in masked["messages"][0]["content"]
