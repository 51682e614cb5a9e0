"""LLM-free credit references: `ContrastCreditReference` (the offline default) and `SiblingContextReference`.

`ContrastCreditReference` aligns the siblings' tool-call sequences and writes a reference in the same five-section
format as the LLM provider (it parses with `parse_credit_reference`):

1. State checks: read calls every success makes before its first write, and the last reads before the final message.
2. Successful branches: the calls every success makes, in order (their common subsequence, via `difflib`), and the
   distinct successful call orders.
3. Failed branches and why: per distinct failed call order, the calls no success makes, the successful calls it
   misses, same-tool calls with different arguments, and whether it stopped early.
4. Deviation points: where each failure first leaves a success's path (reads in any order, writes in order after
   their reads; `deviation_rule="path"`, the oracle's rule) or, with `deviation_rule="prefix"`, where it first departs
   from its closest success (longest common prefix), with the call it made vs the successful call.
5. Literals to mask: listed abstractly as `tool.argument` (the values stay out of the text): argument values of
   successful *write* calls that no failure uses for the same argument (the task-specific values the success hinges
   on), plus the answer literals and sanitized values. The raw values go to `masked_literals` only.

A call is a *read* when its name (last dotted component) starts with a read verb (`get`, `list`, `search`, ...);
anything else is a *write*. Calls are compared by name plus canonical (sorted-key JSON) arguments, after sanitization.

Single-turn groups (no tool call in any sibling) get a short contrast of the final answers' shape (length, lists, code,
an explicit answer line, a closing question). A group that is not mixed, or in which no sibling wrote anything, has no
usable contrast: the provider returns `None` and that group trains with `W = 1`.

`SiblingContextReference` implements the `sibling_context` ablation: the teacher context is the sanitized successful
sibling trace(s) themselves (shortest first, within a character budget) instead of a summary.

Simplification: the alignment is on call signatures only; it does not read tool observations, so a failure whose calls
match a success exactly is described as differing in its final message.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..siblings import CreditReference, Sibling, SiblingGroup
from .alignment import ToolStep, _similarity, common_prefix_len, common_subsequence, path_deviation, tool_sequence
from .base import CreditReferenceProvider, Tally, run_blocking
from .prompt import (
    DEFAULT_MAX_OBSERVATION_CHARS,
    content_text,
    format_credit_reference,
    render_sibling,
    truncate,
)
from .sanitizer import PLACEHOLDER_RE, Sanitizer, finalize_reference


DEFAULT_READ_PREFIXES = (
    "get",
    "list",
    "search",
    "find",
    "read",
    "show",
    "check",
    "lookup",
    "look_up",
    "query",
    "fetch",
    "view",
    "calculate",
    "count",
    "describe",
    "retrieve",
    "verify",
    "validate",
    "think",
)


def final_message(sibling: Sibling) -> str:
    """The text of the last assistant message (the final answer of a tool-use rollout)."""
    for message in reversed(sibling.messages):
        if message.get("role") == "assistant":
            text = content_text(message.get("content")).strip()
            if text:
                return text
    return ""


def _arrow(steps: Sequence[ToolStep]) -> str:
    return " → ".join(s.name for s in steps) if steps else "(no tool calls)"


def _scalar_leaves(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """`(path, value)` for every scalar argument value (`a.b` paths into nested objects, `a[]` into lists)."""
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _scalar_leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list):
        return [leaf for v in obj for leaf in _scalar_leaves(v, f"{prefix}[]")]
    if obj is None or isinstance(obj, bool):
        return []
    return [(prefix, str(obj))]


class ContrastCreditReference(CreditReferenceProvider):
    """Deterministic, LLM-free credit reference from aligned sibling tool-call sequences (the offline default).

    Args:
        sanitizer: the sanitizer run before the contrast (defaults to `Sanitizer()`).
        read_prefixes: name prefixes of read-only tools (state checks); other tools are treated as writes.
        max_items: most bullets per section.
        max_reference_chars: cap on the reference text.
        mask_success_write_values: list the values of successful write calls that no failure uses as literals to mask.
        min_literal_chars: shorter write-call values are not masked (ids and numbers like `1` would mask too much).
        deviation_rule: how a failure's deviation step is named. `"path"` (default): the first call that leaves a
            success's path (`path_deviation`: reads in any order, writes in order after their reads), taking the
            success that the failure follows longest; the same rule as `OracleCreditReference`, on sibling evidence
            only. `"prefix"`: the end of the longest common prefix with the most similar success (the earlier rule).
    """

    name = "contrast"
    sanitizes_input = True

    def __init__(
        self,
        sanitizer: Sanitizer | None = None,
        read_prefixes: Sequence[str] = DEFAULT_READ_PREFIXES,
        max_items: int = 6,
        max_reference_chars: int = 4_000,
        mask_success_write_values: bool = True,
        min_literal_chars: int = 2,
        deviation_rule: str = "path",
    ):
        if deviation_rule not in ("path", "prefix"):
            raise ValueError(f"deviation_rule must be 'path' or 'prefix', got {deviation_rule!r}.")
        self.deviation_rule = deviation_rule
        self.sanitizer = sanitizer or Sanitizer()
        self.read_prefixes = tuple(p.lower() for p in read_prefixes)
        self.max_items = max_items
        self.max_reference_chars = max_reference_chars
        self.mask_success_write_values = mask_success_write_values
        self.min_literal_chars = min_literal_chars
        self._metrics = Tally()

    # ---------------------------------------------------------------- provider API

    async def abuild(self, group: SiblingGroup) -> CreditReference | None:
        return await run_blocking(self.build_reference, group)

    def build(self, group: SiblingGroup) -> CreditReference | None:
        return self.build_reference(group)

    def pop_metrics(self) -> dict[str, float]:
        return self._metrics.pop()

    def build_reference(self, group: SiblingGroup) -> CreditReference | None:
        """Builds the reference synchronously (it is pure CPU work, a few milliseconds)."""
        start = time.perf_counter()
        self._metrics.add("calls")
        try:
            if not group.is_mixed:
                self._metrics.add("skipped")
                return None
            sanitized = self.sanitizer.sanitize(group)
            self._metrics.add("sanitizer_hits", sanitized.total)
            built = self.contrast(sanitized.group)
            if built is None:
                self._metrics.add("skipped")
                return None
            sections, write_values = built
            text = format_credit_reference(sections)
            reference = CreditReference(text=text, masked_literals=write_values, metadata={"provider": self.name})
            reference, _ = finalize_reference(reference, group, sanitized, self.sanitizer, self.max_reference_chars)
            self._metrics.add("reference_chars", len(reference.text))
            return reference
        finally:
            self._metrics.add("latency_s", time.perf_counter() - start)

    # ---------------------------------------------------------------- the contrast

    def is_read(self, name: str) -> bool:
        """Whether a tool name looks read-only (its last dotted component starts with a read verb)."""
        base = name.rsplit(".", 1)[-1].lower()
        return base.startswith(self.read_prefixes)

    def contrast(self, group: SiblingGroup) -> tuple[dict[str, str], list[str]] | None:
        """The five sections and the success-only write values for a sanitized group, or `None` (no contrast)."""
        sequences = [tool_sequence(s) for s in group.siblings]
        if not any(sequences):
            return self._text_contrast(group)
        succ = [i for i, s in enumerate(group.siblings) if s.success]
        fail = [i for i, s in enumerate(group.siblings) if not s.success]
        if not succ or not fail:
            return None
        k = self.max_items
        success_seqs = [sequences[i] for i in succ]
        common = common_subsequence(success_seqs)
        by_name = False
        if not common:
            common_names = common_subsequence([[s.name for s in seq] for seq in success_seqs])
            common = [ToolStep(name=n, args="", raw_args=None) for n in common_names]
            by_name = True
        common_label = (lambda s: f"`{s.name}`") if by_name else (lambda s: s.label())

        # 1. State checks.
        state = []
        first_write = next((j for j, s in enumerate(common) if not self.is_read(s.name)), len(common))
        reads_before = [s for s in common[:first_write] if self.is_read(s.name)]
        if reads_before:
            state.append("- Before acting, every success checks: " + ", ".join(common_label(s) for s in reads_before))
        final_reads = self._final_reads(success_seqs)
        if final_reads:
            state.append("- The last reads before the final message: " + ", ".join(f"`{n}`" for n in final_reads))
        state.append(self._final_shape(group.siblings, succ))
        if not reads_before and not any(self.is_read(s.name) for seq in success_seqs for s in seq):
            state.append("- The successes make no read-only call; their state comes from the conversation.")

        # 2. Successful branches.
        branches = []
        if common:
            steps = "; ".join(f"{j + 1}. {common_label(s)}" for j, s in enumerate(common[: 2 * k]))
            qualifier = "these tools" if by_name else "these calls"
            branches.append(f"- Every success makes {qualifier} in this order: {steps}")
        else:
            branches.append("- The successes share no call; they solve the task along different branches.")
        orders = list(dict.fromkeys(_arrow(sequences[i]) for i in succ))
        for order in orders[:k]:
            count = sum(_arrow(sequences[i]) == order for i in succ)
            branches.append(f"- Successful call order ({count} of {len(succ)}): {order}")

        # 3. Failed branches and why; 4. deviation points.
        success_names = {s.name for seq in success_seqs for s in seq}
        success_steps = {s for seq in success_seqs for s in seq}
        failed: list[str] = []
        deviations: list[str] = []
        seen_orders: set[tuple[ToolStep, ...]] = set()
        deviation_steps: Counter[int] = Counter()
        for i in fail:
            seq = sequences[i]
            j_best = max(succ, key=lambda j: (_similarity(seq, sequences[j]), -len(sequences[j]), -j))
            best = sequences[j_best]
            if self.deviation_rule == "path":
                dev, j_path = self._path_deviation(seq, sequences, succ)
                deviation_steps[len(seq) + 1 if dev is None else dev + 1] += 1
                text = self._path_text(seq, sequences[j_path], dev, j_path)
            else:
                n = common_prefix_len(seq, best)
                deviation_steps[n + 1] += 1
                text = self._deviation(seq, best, n, j_best)
            if len(deviations) < k:
                deviations.append(f"- Sibling {i + 1}: {text}")
            if tuple(seq) in seen_orders or len(failed) >= k:
                continue
            seen_orders.add(tuple(seq))
            why = []
            only_fail = [s for s in seq if s.name not in success_names]
            if only_fail:
                why.append("calls no success makes: " + ", ".join(dict.fromkeys(s.label() for s in only_fail)))
            other_args = [s for s in seq if s.name in success_names and s not in success_steps]
            if other_args:
                why.append(
                    "same tools as the successes with other arguments: "
                    + ", ".join(dict.fromkeys(s.label() for s in other_args[:3]))
                )
            missing = [name for name in dict.fromkeys(s.name for s in common) if name not in {s.name for s in seq}]
            if missing:
                why.append("never calls " + ", ".join(f"`{m}`" for m in missing))
            if not why:
                if len(seq) < len(best):
                    why.append("stops before the successful sequence is complete")
                elif seq == best:
                    why.append("makes the same calls as a success; the failure is in the final message")
                else:
                    why.append("reorders the successful calls")
            count = sum(tuple(sequences[f]) == tuple(seq) for f in fail)
            failed.append(f"- Failed order ({count} of {len(fail)}): {_arrow(seq)}; " + "; ".join(why))
        only_fail_names = sorted({s.name for i in fail for s in sequences[i]} - success_names)
        if only_fail_names:
            failed.append("- Tools only failures use: " + ", ".join(f"`{n}`" for n in only_fail_names))
        if deviation_steps:
            step, count = deviation_steps.most_common(1)[0]
            deviations.insert(0, f"- Most failures ({count} of {len(fail)}) first deviate at step {step}.")

        # 5. Literals to mask.
        write_values, literal_lines = self._write_literals(sequences, succ, fail)
        literal_lines += self._masked_lines(group)
        sections = {
            "state_checks": "\n".join(state),
            "successful_branches": "\n".join(branches),
            "failed_branches": "\n".join(failed),
            "deviation_points": "\n".join(deviations),
            "literals_to_mask": "\n".join(literal_lines[: 2 * k]) or "- none",
        }
        return sections, write_values

    def _final_reads(self, success_seqs: Sequence[Sequence[ToolStep]]) -> list[str]:
        """Read calls that every success makes after its last write (its final checks)."""
        tails = []
        for seq in success_seqs:
            last_write = max((j for j, s in enumerate(seq) if not self.is_read(s.name)), default=-1)
            tails.append([s.name for s in seq[last_write + 1 :] if self.is_read(s.name)])
        if not tails or not all(tails):
            return []
        return list(dict.fromkeys(common_subsequence(tails)))

    @staticmethod
    def _final_shape(siblings: Sequence[Sibling], succ: Sequence[int]) -> str:
        finals = [final_message(siblings[i]) for i in succ]
        with_text = [f for f in finals if f]
        if not with_text:
            return "- The successes end on a tool call, without a final message."
        words = statistics.median(len(f.split()) for f in with_text)
        asks = sum(f.rstrip().endswith("?") for f in with_text)
        shape = f"- The successes end with a final message of about {words:.0f} words"
        if asks == len(with_text):
            shape += " that asks the user a question"
        return shape + "."

    def _path_deviation(
        self, seq: Sequence[ToolStep], sequences: Sequence[Sequence[ToolStep]], succ: Sequence[int]
    ) -> tuple[int | None, int]:
        """The latest deviation of `seq` from any success's path (None: it never leaves one) and that success."""
        scored = [(path_deviation(sequences[j], seq, self.is_read), j) for j in succ]
        dev, j = max(scored, key=lambda d: (float("inf") if d[0] is None else d[0], -d[1]))
        return dev, j

    def _path_text(self, seq: Sequence[ToolStep], path: Sequence[ToolStep], dev: int | None, j: int) -> str:
        if dev is None:
            return f"follows the path of sibling {j + 1} (success); it differs only in its final message."
        made = set(seq[:dev])
        missing = next((s for s in path if s not in made), None)
        if dev == len(seq):
            what = missing.label() if missing is not None else "its final message"
            return f"stops after step {dev} (final message) where sibling {j + 1} (success) continues with {what}."
        step, call = dev + 1, seq[dev]
        if self.is_read(call.name):
            return f"step {step} reads {call.label()}, which sibling {j + 1} (success) never reads."
        writes_done = sum(not self.is_read(s.name) for s in seq[:dev])
        path_writes = [s for s in path if not self.is_read(s.name)]
        if writes_done >= len(path_writes):
            return f"step {step} writes {call.label()} where sibling {j + 1} (success) makes no further write."
        expected = path_writes[writes_done]
        if call == expected:
            return f"step {step} writes {call.label()} before the reads sibling {j + 1} (success) makes first."
        if call.name == expected.name:
            return (
                f"step {step} calls `{call.name}` with other arguments than sibling {j + 1} (success): "
                f"{call.label()} vs {expected.label()}."
            )
        return f"step {step} calls {call.label()} where sibling {j + 1} (success) next writes {expected.label()}."

    @staticmethod
    def _deviation(seq: Sequence[ToolStep], best: Sequence[ToolStep], n: int, j: int) -> str:
        step = n + 1
        if n < len(seq) and n < len(best):
            if seq[n].name == best[n].name:
                return (
                    f"step {step} calls `{seq[n].name}` with other arguments than sibling {j + 1} (success): "
                    f"{seq[n].label()} vs {best[n].label()}."
                )
            return f"step {step} calls {seq[n].label()} where sibling {j + 1} (success) calls {best[n].label()}."
        if n == len(seq) and n < len(best):
            return f"stops after step {n} (final message) where sibling {j + 1} (success) continues with {best[n].label()}."
        if n == len(best) and n < len(seq):
            return f"after the successful sequence of sibling {j + 1}, step {step} adds {seq[n].label()}."
        return f"makes exactly the calls of sibling {j + 1} (success); it differs only in its final message."

    def _write_literals(
        self, sequences: Sequence[Sequence[ToolStep]], succ: Sequence[int], fail: Sequence[int]
    ) -> tuple[list[str], list[str]]:
        if not self.mask_success_write_values:
            return [], []
        failure_values: dict[tuple[str, str], set[str]] = {}
        for i in fail:
            for step in sequences[i]:
                for path, value in _scalar_leaves(step.raw_args):
                    failure_values.setdefault((step.name, path), set()).add(value)
        values: list[str] = []
        paths: list[str] = []
        for i in succ:
            for step in sequences[i]:
                if self.is_read(step.name):
                    continue
                for path, value in _scalar_leaves(step.raw_args):
                    if len(value) < self.min_literal_chars or PLACEHOLDER_RE.search(value):
                        continue
                    if value in failure_values.get((step.name, path), set()):
                        continue
                    if value not in values:
                        values.append(value)
                    label = f"{step.name}.{path}"
                    if label not in paths:
                        paths.append(label)
        lines = [f"- `{p}` (the value successful siblings write here; failures write other values)" for p in paths]
        return values, lines

    def _masked_lines(self, group: SiblingGroup) -> list[str]:
        """Mentions the placeholder types present in the evidence (they stay masked)."""
        text = json.dumps([s.messages for s in group.siblings], ensure_ascii=False, default=str)
        kinds = sorted(set(PLACEHOLDER_RE.findall(text)))
        return [f"- every `{kind}` value" for kind in kinds]

    def _text_contrast(self, group: SiblingGroup) -> tuple[dict[str, str], list[str]] | None:
        """Single-turn groups: contrast the shape of successful and failed final answers."""
        finals = [final_message(s) for s in group.siblings]
        if not any(finals):
            return None
        succ = [finals[i] for i, s in enumerate(group.siblings) if s.success]
        fail = [finals[i] for i, s in enumerate(group.siblings) if not s.success]
        s_feats, f_feats = _answer_features(succ), _answer_features(fail)
        differences = []
        for name, s_val, f_val in (
            ("an explicit final-answer line", s_feats["answer_line"], f_feats["answer_line"]),
            ("a list", s_feats["list"], f_feats["list"]),
            ("a code block", s_feats["code"], f_feats["code"]),
            ("a closing question", s_feats["question"], f_feats["question"]),
        ):
            if abs(s_val - f_val) >= 0.5:
                more = "successes" if s_val > f_val else "failures"
                differences.append(f"- Mostly the {more} end with {name}.")
        ratio = (f_feats["words"] + 1) / (s_feats["words"] + 1)
        if ratio >= 1.5 or ratio <= 1 / 1.5:
            longer = "longer" if ratio > 1 else "shorter"
            differences.append(f"- Failed answers are {longer} (about {ratio:.1f}× the successes' length).")
        if not differences:
            differences.append("- Successful and failed answers have the same shape; the difference is in content.")
        sections = {
            "state_checks": "- No sibling calls a tool; the contrast is on the final answers only.",
            "successful_branches": f"- Successful answers: {_describe_features(s_feats)}.",
            "failed_branches": f"- Failed answers: {_describe_features(f_feats)}.",
            "deviation_points": "\n".join(differences),
            "literals_to_mask": "\n".join(self._masked_lines(group)) or "- the final answer value",
        }
        return sections, []


def _answer_features(texts: Sequence[str]) -> dict[str, float]:
    texts = [t for t in texts if t] or [""]
    n = len(texts)
    return {
        "words": float(statistics.median(len(t.split()) for t in texts)),
        "lines": float(statistics.median(len(t.splitlines()) for t in texts)),
        "answer_line": sum(_has_answer_line(t) for t in texts) / n,
        "list": sum(any(ln.lstrip().startswith(("- ", "* ", "1.")) for ln in t.splitlines()) for t in texts) / n,
        "code": sum("```" in t for t in texts) / n,
        "question": sum(t.rstrip().endswith("?") for t in texts) / n,
    }


def _has_answer_line(text: str) -> bool:
    lowered = text.lower()
    return "\\boxed" in lowered or "final answer" in lowered or "answer:" in lowered or "####" in lowered


def _describe_features(feats: dict[str, float]) -> str:
    parts = [f"about {feats['words']:.0f} words over {feats['lines']:.0f} lines"]
    if feats["answer_line"] >= 0.5:
        parts.append("an explicit final-answer line")
    if feats["list"] >= 0.5:
        parts.append("a list")
    if feats["code"] >= 0.5:
        parts.append("a code block")
    return ", ".join(parts)


class SiblingContextReference(CreditReferenceProvider):
    """The `sibling_context` ablation: the teacher context is the sanitized successful trace(s), not a summary.

    Successes are shown shortest first while they fit `max_chars`; the first one is cut to fit if it alone is too
    long. Groups without a success get `None`.

    Args:
        sanitizer: the sanitizer (defaults to `Sanitizer()`).
        max_chars: character budget of the context.
        max_observation_chars: cap on each tool observation and message.
        max_successes: most successful traces shown.
    """

    name = "sibling_context"
    sanitizes_input = True

    def __init__(
        self,
        sanitizer: Sanitizer | None = None,
        max_chars: int = 8_000,
        max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS // 3,
        max_successes: int = 2,
    ):
        self.sanitizer = sanitizer or Sanitizer()
        self.max_chars = max_chars
        self.max_observation_chars = max_observation_chars
        self.max_successes = max_successes
        self._metrics = Tally()

    async def abuild(self, group: SiblingGroup) -> CreditReference | None:
        return await run_blocking(self.build, group)

    def build(self, group: SiblingGroup) -> CreditReference | None:
        self._metrics.add("calls")
        if not group.successes:
            self._metrics.add("skipped")
            return None
        sanitized = self.sanitizer.sanitize(group)
        self._metrics.add("sanitizer_hits", sanitized.total)
        successes = [(i, s) for i, s in enumerate(sanitized.group.siblings) if s.success]
        rendered = sorted(
            ((render_sibling(s, self.max_observation_chars, index=i + 1), i) for i, s in successes),
            key=lambda r: (len(r[0]), r[1]),
        )
        header = "Successful sibling rollout(s) for this task (training-only context):"
        blocks: list[str] = []
        used = len(header)
        for text, _ in rendered[: self.max_successes]:
            if blocks and used + len(text) + 2 > self.max_chars:
                break
            blocks.append(truncate(text, self.max_chars - used - 2))
            used += len(blocks[-1]) + 2
        reference = CreditReference(text="\n\n".join([header, *blocks]), metadata={"provider": self.name})
        reference, _ = finalize_reference(reference, group, sanitized, self.sanitizer, self.max_chars)
        self._metrics.add("reference_chars", len(reference.text))
        return reference

    def pop_metrics(self) -> dict[str, float]:
        return self._metrics.pop()
