"""`OracleCreditReference`: the credit reference of the offline airline environment's scripted expert.

It is the upper bound of what an LLM reference could say about a group: it knows the expert's path (the gold tool
calls) and, for each failed sibling, where that sibling leaves it (`first_deviation`: reads in any order, each write in
order with the expert's arguments and after the reads the expert made before it). It is *training-only*: it reads the
task's gold fields, which must never reach the policy, and it exists to measure how well the divergence → segmenter →
weights pipeline localizes when the reference is right (`benchmarks/localization.py`), not to train real models.

The reference has the same five Table 5 sections as the other providers and goes through the same sanitizer and
`finalize_reference`, so literal masking is identical:

- the task's `required_facts` are answer literals (masked in the text, listed in `masked_literals`);
- the values of the expert's *write* arguments that the request does not contain (a flight found by a search, a bag
  count, a new reservation id) are written abstractly as `tool.argument`; the raw values go to `masked_literals`.

The group's task comes from its metadata: `task` (the task dict or its JSON, as in the dataset's `task` column) or
`task_id` (rebuilt with `task_from_id`; the trainer forwards this column). A group without either gets `None`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any

from ..envs.offline_airline.env import canonical_call, is_read
from ..envs.offline_airline.reward import first_deviation
from ..envs.offline_airline.tasks import Task, load_task, task_from_id
from ..siblings import CreditReference, SiblingGroup
from .alignment import ToolStep, tool_sequence
from .base import CreditReferenceProvider, Tally, run_blocking
from .contrast import _scalar_leaves
from .prompt import format_call, format_credit_reference, truncate
from .sanitizer import Sanitizer, finalize_reference


_FREE_TEXT_ARGS = ("summary",)


def group_task(group: SiblingGroup) -> Task | None:
    """The offline-airline task of a group, from its `task` or `task_id` metadata (None when it has neither)."""
    metadata = group.metadata or {}
    if metadata.get("task"):
        return load_task(metadata["task"])
    task_id = metadata.get("task_id")
    if isinstance(task_id, str):
        try:
            return task_from_id(task_id)
        except ValueError:
            return None
    return None


def _calls(steps: list[ToolStep]) -> list[dict[str, Any]]:
    return [{"name": s.name, "arguments": s.raw_args if isinstance(s.raw_args, dict) else {}} for s in steps]


class OracleCreditReference(CreditReferenceProvider):
    """Training-only credit reference from the offline airline environment's scripted expert.

    Args:
        sanitizer: the sanitizer run on the evidence (defaults to `Sanitizer()`).
        max_items: most failed siblings described.
        max_reference_chars: cap on the reference text.
        min_literal_chars: shorter expert write values are not masked.
    """

    name = "oracle"
    sanitizes_input = True

    def __init__(
        self,
        sanitizer: Sanitizer | None = None,
        max_items: int = 6,
        max_reference_chars: int = 4_000,
        min_literal_chars: int = 2,
    ):
        self.sanitizer = sanitizer or Sanitizer()
        self.max_items = max_items
        self.max_reference_chars = max_reference_chars
        self.min_literal_chars = min_literal_chars
        self._metrics = Tally()

    async def abuild(self, group: SiblingGroup) -> CreditReference | None:
        return await run_blocking(self.build, group)

    def build(self, group: SiblingGroup) -> CreditReference | None:
        start = time.perf_counter()
        self._metrics.add("calls")
        try:
            task = group_task(group)
            if task is None or not group.is_mixed:
                self._metrics.add("skipped")
                return None
            key = self.sanitizer.config.answer_literals_key
            previous = (group.metadata or {}).get(key) or []
            previous = [previous] if isinstance(previous, (str, int, float)) else list(previous)
            group = dataclasses.replace(
                group, metadata={**(group.metadata or {}), key: [*previous, *task["required_facts"]]}
            )
            sanitized = self.sanitizer.sanitize(group)
            self._metrics.add("sanitizer_hits", sanitized.total)
            sections, literals = self.sections(task, group, sanitized.group)
            reference = CreditReference(
                text=format_credit_reference(sections), masked_literals=literals, metadata={"provider": self.name}
            )
            reference, _ = finalize_reference(reference, group, sanitized, self.sanitizer, self.max_reference_chars)
            self._metrics.add("reference_chars", len(reference.text))
            return reference
        finally:
            self._metrics.add("latency_s", time.perf_counter() - start)

    def pop_metrics(self) -> dict[str, float]:
        return self._metrics.pop()

    def expert_literals(self, task: Task) -> list[str]:
        """Values of the expert's write arguments that the request does not contain (masked, written abstractly)."""
        values = []
        for call in task["actions"]:
            if is_read(call["name"]):
                continue
            for path, value in _scalar_leaves(call["arguments"]):
                if path in _FREE_TEXT_ARGS or len(value) < self.min_literal_chars or value in task["request"]:
                    continue
                if value not in values:
                    values.append(value)
        return values

    def _label(self, name: str, args: Any, literals: list[str]) -> str:
        if isinstance(args, dict):
            args = {
                k: f"<{name}.{k}>" if str(v) in literals else ("…" if k in _FREE_TEXT_ARGS else v)
                for k, v in args.items()
            }
        return "`" + truncate(format_call(name, args, max_value_chars=48), 140) + "`"

    def sections(self, task: Task, group: SiblingGroup, sanitized: SiblingGroup) -> tuple[dict[str, str], list[str]]:
        """The five sections (from the sanitized evidence) and the expert's write literals."""
        literals = self.expert_literals(task)
        expert = task["actions"]
        labels = [self._label(c["name"], c["arguments"], literals) for c in expert]
        reads = [labels[j] for j, c in enumerate(expert) if is_read(c["name"])]
        first_write = next((j for j, c in enumerate(expert) if not is_read(c["name"])), len(expert))

        state = []
        if first_write < len(expert) and first_write > 0:
            state.append("- Before its first write the expert checks: " + ", ".join(labels[:first_write]))
        elif reads:
            state.append("- The expert only reads: " + ", ".join(reads) + "; it changes nothing.")
        n_facts = len(task["required_facts"])
        state.append(
            f"- The expert's final message states {n_facts} fact(s) read from the tools (masked)."
            if n_facts
            else "- The expert's final message explains the outcome; it states no fact from the tools."
        )

        path = "; ".join(f"{j + 1}. {label}" for j, label in enumerate(labels))
        branches = [f"- The expert's path: {path}; then the final message."]
        branches.append(
            "- Reads may come in any order before the write that needs them; writes must come in this order."
        )
        on_path = [i + 1 for i, s in enumerate(group.siblings) if s.success]
        branches.append("- Successful siblings: " + ", ".join(str(i) for i in on_path))

        failed, deviations = [], []
        steps_at: Counter[int] = Counter()
        failures = [i for i, s in enumerate(group.siblings) if not s.success]
        for i in failures:
            calls = tool_sequence(group.siblings[i])
            shown = tool_sequence(sanitized.siblings[i])
            dev = first_deviation(task, _calls(calls))
            reason = self._reason(task, calls, shown, dev, labels, literals)
            steps_at[len(calls) + 1 if dev is None else dev + 1] += 1
            if len(deviations) < self.max_items:
                deviations.append(f"- Sibling {i + 1}: {reason}")
            if len(failed) < self.max_items:
                order = " → ".join(s.name for s in shown) or "(no tool calls)"
                failed.append(f"- Sibling {i + 1} ({order}): {self._why(dev, len(calls))}")
        step, count = steps_at.most_common(1)[0]
        if count > 1:
            deviations.insert(
                0, f"- Most failures ({count} of {len(failures)}) leave the expert's path at step {step}."
            )

        literal_lines = [
            f"- `{c['name']}.{k}`" for c in expert for k, v in (c["arguments"] or {}).items() if str(v) in literals
        ]
        if n_facts:
            literal_lines.append("- every fact the final message must state")
        sections = {
            "state_checks": "\n".join(state),
            "successful_branches": "\n".join(branches),
            "failed_branches": "\n".join(failed),
            "deviation_points": "\n".join(deviations),
            "literals_to_mask": "\n".join(dict.fromkeys(literal_lines)) or "- none",
        }
        return sections, literals

    @staticmethod
    def _why(dev: int | None, n_calls: int) -> str:
        if dev is None:
            return "follows the expert's path; its final message is wrong (a missing or wrong fact)"
        if dev == n_calls:
            return "stops before the expert's path is complete"
        return "leaves the expert's path"

    def _reason(
        self,
        task: Task,
        calls: list[ToolStep],
        shown: list[ToolStep],
        dev: int | None,
        labels: list[str],
        literals: list[str],
    ) -> str:
        expert = task["actions"]
        if dev is None:
            return f"makes the expert's calls (steps 1–{len(calls)}); it goes wrong in its final message."
        step = dev + 1
        writes_done = sum(not is_read(s.name) for s in calls[:dev])
        write_positions = [j for j, c in enumerate(expert) if not is_read(c["name"])]
        expected = labels[write_positions[writes_done]] if writes_done < len(write_positions) else None
        if dev == len(calls):
            done = {canonical_call(s.name, s.raw_args if isinstance(s.raw_args, dict) else {}) for s in calls}
            missing = next(
                (labels[j] for j, c in enumerate(expert) if canonical_call(c["name"], c["arguments"]) not in done),
                "the expert's remaining calls",
            )
            return f"stops after step {dev} (final message) where the expert continues with {missing}."
        made = shown[dev] if dev < len(shown) else calls[dev]
        label = self._label(made.name, made.raw_args, literals)
        if is_read(calls[dev].name):
            return f"step {step} reads {label}, which the expert never reads (a wrong id or a needless lookup)."
        if expected is not None and calls[dev].name == expert[write_positions[writes_done]]["name"]:
            needed = [labels[j] for j in range(write_positions[writes_done]) if is_read(expert[j]["name"])]
            target = expert[write_positions[writes_done]]
            args = calls[dev].raw_args if isinstance(calls[dev].raw_args, dict) else {}
            same = canonical_call(made.name, args) == canonical_call(target["name"], target["arguments"])
            if same and needed:
                return f"step {step} writes {label} before checking " + ", ".join(needed) + "."
            return f"step {step} calls `{made.name}` with other arguments than the expert: {label} vs {expected}."
        if expected is None:
            return f"step {step} writes {label} where the expert makes no further write."
        return f"step {step} calls {label} where the expert's next write is {expected}."
