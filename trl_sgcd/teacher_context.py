"""Building the teacher-side scoring context (training only; never seen by the student or at deployment).

The teacher is the *same policy* scored on the *same completion tokens*; only the prompt differs: the credit
reference is inserted as extra context. Insertion works on chat messages, before TRL's own tokenisation, so the chat
template, tool schema and generation prompt are exactly the student's.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

from .siblings import Message, SiblingGroup


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


def render_transcript(messages: list[Message], max_observation_chars: int = 800) -> str:
    """Plain-text rendering of a rollout: assistant text, tool calls and (truncated) tool results."""
    lines = []
    for message in messages:
        role = message.get("role")
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        if role == "assistant":
            if content.strip():
                lines.append(f"assistant: {content.strip()}")
            for call in message.get("tool_calls") or []:
                function = call.get("function", call)
                arguments = function.get("arguments", {})
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments, sort_keys=True)
                lines.append(f"call {function.get('name')}({arguments})")
        elif role == "tool":
            text = str(content)
            if len(text) > max_observation_chars:
                text = text[:max_observation_chars] + " …[truncated]"
            lines.append(f"result {message.get('name', 'tool')}: {text}")
        elif content:
            lines.append(f"{role}: {content}")
    return "\n".join(lines)


def sibling_context(group: SiblingGroup, max_chars: int = 6000) -> str | None:
    """Teacher context of the `sibling_context` and `sdpo` modes: the raw trace of a successful sibling.

    The shortest success is used (it fits the budget best and, like SDPO's demonstrations, is a complete solution).
    Returns `None` when the group has no success. The group is expected to be sanitised already.
    """
    successes = group.successes
    if not successes:
        return None
    best = min(successes, key=lambda s: len(render_transcript(s.messages)))
    text = render_transcript(best.messages)
    if len(text) > max_chars:
        text = text[:max_chars] + "\n…[truncated]"
    return f"A successful attempt at this task:\n{text}"


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
