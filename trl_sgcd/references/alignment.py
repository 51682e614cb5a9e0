"""Aligning tool-call sequences: comparable calls (`ToolStep`), common subsequences and prefixes, and the path rule
(`path_deviation`) that `ContrastCreditReference`, `OracleCreditReference` and the credit-precision measure share."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..siblings import Sibling
from .prompt import format_call, tool_call_parts, truncate


@dataclass(frozen=True)
class ToolStep:
    """One tool call, comparable across siblings.

    Args:
        name: the tool name.
        args: the arguments as canonical JSON (sorted keys), `""` when there are none.
        raw_args: the parsed arguments (for literal extraction).
    """

    name: str
    args: str
    raw_args: Any = None

    @property
    def signature(self) -> str:
        return f"{self.name}({self.args})"

    def label(self, max_chars: int = 140) -> str:
        return "`" + truncate(format_call(self.name, self.raw_args, max_value_chars=48), max_chars) + "`"

    def __hash__(self) -> int:
        return hash((self.name, self.args))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ToolStep) and (self.name, self.args) == (other.name, other.args)


def tool_sequence(sibling: Sibling) -> list[ToolStep]:
    """The sibling's tool calls, in order, as `ToolStep`s."""
    steps = []
    for message in sibling.messages:
        if message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or []:
            name, args = tool_call_parts(call)
            canonical = "" if args in (None, "", {}, []) else json.dumps(args, sort_keys=True, ensure_ascii=False)
            steps.append(ToolStep(name=name, args=canonical, raw_args=args))
    return steps


def common_subsequence(sequences: Sequence[Sequence[Any]]) -> list[Any]:
    """A common subsequence of all `sequences` (pairwise `difflib` matching blocks, folded left)."""
    if not sequences:
        return []
    common = list(sequences[0])
    for seq in sequences[1:]:
        matcher = difflib.SequenceMatcher(None, common, list(seq), autojunk=False)
        common = [common[b.a + k] for b in matcher.get_matching_blocks() for k in range(b.size)]
    return common


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def path_deviation(path: Sequence[ToolStep], seq: Sequence[ToolStep], is_read: Callable[[str], bool]) -> int | None:
    """Index of the first call of `seq` that leaves `path`, or None if it never does (the oracle's rule on a success).

    Reads of `path` may come in any order and be repeated; its writes must come in order, each after the reads `path`
    makes before it. A read `path` never makes, a write other than the next one, or a write before its reads is a
    deviation; a sequence that only makes on-path calls but stops before the path is complete deviates at
    `len(seq)`.
    """
    reads = {s for s in path if is_read(s.name)}
    writes = [(j, s) for j, s in enumerate(path) if not is_read(s.name)]
    done: set[ToolStep] = set()
    next_write = 0
    for index, step in enumerate(seq):
        if step in reads:
            done.add(step)
            continue
        if next_write < len(writes):
            position, write = writes[next_write]
            if step == write and {s for s in path[:position] if is_read(s.name)} <= done:
                next_write += 1
                continue
        return index
    if next_write < len(writes) or not reads <= done:
        return len(seq)
    return None


def _similarity(a: Sequence[Any], b: Sequence[Any]) -> float:
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, list(a), list(b), autojunk=False).ratio()
