"""Credit dumps are masked by default: an echoing trace leaves no secret on disk; `raw=True` keeps it verbatim."""

import json

import torch

from trl_sgcd.credit_dump import read_file, write_batch
from trl_sgcd.references.sanitizer import mask_credit_record, mask_tokens
from trl_sgcd.sampling import GlobalRollouts
from trl_sgcd.siblings import CreditReference


torch.set_num_threads(1)

API_KEY = "sk-proj-Zq8RmT4vX2pL9nW3kY7bH5cJ"
CARD = "4111 1111 1111 1111"
EMAIL = "mia.li@example.com"
PASSWORD = "hunter2-Tr0ub4dor"
ANSWER = "BOOKED-7Q2XK9"
SECRETS = (API_KEY, CARD, EMAIL, PASSWORD, ANSWER)


def hostile_messages():
    return [
        {"role": "assistant", "content": f"My key is {API_KEY}; mail {EMAIL}"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "pay", "arguments": json.dumps({"card_number": CARD})}}
            ],
        },
        {"role": "tool", "content": json.dumps({"password": PASSWORD, "expected_answer": ANSWER})},
    ]


def split_tokens(text, width=3):
    return [text[i : i + width] for i in range(0, len(text), width)]


def test_mask_tokens_keeps_alignment():
    tokens = ["pay ", "41", "11 11", "11 1111 ", "1111", " now"]
    masked = mask_tokens(tokens, [CARD])
    assert masked == ["pay ", "<MASKED>", "", "", "", " now"]
    assert len(masked) == len(tokens)


def test_masked_record_holds_no_secret():
    text = " ".join(m["content"] for m in hostile_messages()) + f" card {CARD}"
    record = {
        "messages": hostile_messages(),
        "metadata": {"task_id": "t1", "ground_truth": ANSWER},
        "reference": f"The good sibling paid with {CARD} and used {API_KEY}.",
        "tokens": split_tokens(text),
        "weights": [1.0] * len(split_tokens(text)),
    }
    masked = mask_credit_record(record)
    dumped = json.dumps(masked)
    for secret in SECRETS:
        assert secret not in dumped, secret
    assert len(masked["tokens"]) == len(record["tokens"])
    assert masked["metadata"]["task_id"] == "t1"


def _write(path, raw):
    text = f"key {API_KEY} card {CARD} mail {EMAIL}"
    ids = list(range(len(split_tokens(text))))
    pieces = split_tokens(text)
    rollouts = GlobalRollouts(
        prompts=["p", "p"],
        completions=[hostile_messages(), "fine"],
        rewards=[1.0, 0.0],
        num_generations=2,
        success_threshold=1.0,
        metadata=[{"expected_answer": ANSWER}, {}],
        local_start=0,
        local_end=2,
    )
    n = len(ids)
    output = {
        "completion_ids": torch.tensor([ids, ids]),
        "completion_mask": torch.ones(2, n, dtype=torch.long),
        "advantages": torch.tensor([0.5, -0.5]),
    }
    write_batch(
        str(path),
        step=1,
        rollouts=rollouts,
        output=output,
        loss_mask=torch.ones(2, n, dtype=torch.bool),
        local_refs=[CreditReference(text=f"It echoed {PASSWORD} and {CARD}"), None],
        weights=torch.ones(2, n),
        credit_mask=torch.zeros(2, n, dtype=torch.bool),
        sequence_advantages=torch.tensor([0.5, -0.5]),
        decode=lambda t: pieces[t[0]],
        raw=raw,
    )
    return path.read_text()


def test_write_batch_masks_by_default_and_raw_keeps(tmp_path):
    masked = _write(tmp_path / "masked.jsonl", raw=False)
    for secret in SECRETS:
        assert secret not in masked, secret
    records = read_file(tmp_path / "masked.jsonl")
    assert len(records[0]["tokens"]) == len(records[0]["weights"])
    raw = _write(tmp_path / "raw.jsonl", raw=True)
    assert API_KEY in "".join(json.loads(raw.splitlines()[0])["tokens"]) and PASSWORD in raw
