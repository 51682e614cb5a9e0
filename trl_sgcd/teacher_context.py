"""Building the teacher-side scoring context (training only; never seen by the student or at deployment).

The teacher is the *same policy* scored on the *same completion tokens*; only the prompt differs: the credit
reference is inserted as extra context. Insertion works on chat messages, before TRL's own tokenisation, so the chat
template, tool schema and generation prompt are exactly the student's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .siblings import Message


def insert_reference(prompt: list[Message] | str, block: str, position: str = "system") -> list[Message] | str:
    """Returns a copy of `prompt` with `block` inserted; the input is never mutated.

    Args:
        prompt: the student prompt (chat messages or a string).
        block: the formatted reference text.
        position: `"system"` appends to the system message (inserting one at the start if there is none);
            `"user"` appends to the last user message.
    """
    if isinstance(prompt, str):
        return f"{block}\n\n{prompt}"
    messages = copy.deepcopy(prompt)
    if position == "system":
        if messages and messages[0].get("role") == "system":
            messages[0] = {**messages[0], "content": _append(messages[0].get("content"), block)}
        else:
            messages.insert(0, {"role": "system", "content": block})
        return messages
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            messages[i] = {**messages[i], "content": _append(messages[i].get("content"), block)}
            return messages
    messages.insert(0, {"role": "system", "content": block})
    return messages


def _append(content: Any, block: str) -> Any:
    if isinstance(content, list):  # multimodal content blocks
        return [*content, {"type": "text", "text": f"\n\n{block}"}]
    return f"{content}\n\n{block}" if content else block


def literal_token_mask(token_ids: list[int], literals: list[str], tokenizer) -> torch.Tensor:
    """Marks the tokens of `token_ids` whose decoded text overlaps an occurrence of any literal.

    Paper App. B: "answer-bearing literals and masked values receive zero credit-reference weight". Matching is done
    on the decoded text, so a literal split across several tokens masks all of them.
    """
    mask = torch.zeros(len(token_ids), dtype=torch.bool)
    literals = [lit for lit in literals if lit and lit.strip()]
    if not literals or not token_ids:
        return mask
    pieces = [tokenizer.decode([tid], skip_special_tokens=False) for tid in token_ids]
    starts, offset = [], 0
    for piece in pieces:
        starts.append(offset)
        offset += len(piece)
    text = "".join(pieces)
    for literal in literals:
        begin = text.find(literal)
        while begin != -1:
            end = begin + len(literal)
            for t, (s, piece) in enumerate(zip(starts, pieces, strict=True)):
                if s < end and s + len(piece) > begin:
                    mask[t] = True
            begin = text.find(literal, begin + 1)
    return mask
