"""The credit-reference prompt (paper Table 5), its long-context fallback (App. B), and a tolerant reply parser.

`build_credit_prompt` renders an already *sanitized* group (see `sanitizer.py`; the prompt builder does not mask
anything itself) into two chat messages: the Table 5 role as the system message, and the task, the siblings' visible
traces with their verifier outcomes, the rules and the five-section output format as the user message.

Long-context fallback: the prompt has a character budget (`max_chars`, a tokenizer-free proxy for the context window:
roughly 4 characters per token). If every sibling does not fit, the prompt keeps the smaller outcome class plus as many
siblings of the other class (matched one to one), preferring shorter successes and longer failures; if that still does
not fit, observations are truncated further (halving down to `min_observation_chars`), then matched pairs are
dropped (never below one success and one failure), and as a last resort each sibling is cut to an equal share. The
paper does not say what happens when the matched subset itself is too long; the last two steps are ours.

`parse_credit_reference` accepts markdown headers, numbered or bold headers, different casing, and JSON objects with
the section keys, and re-renders the sections in one canonical markdown layout so the teacher context does not depend
on the LLM's formatting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..siblings import CreditReference, Sibling, SiblingGroup
from .base import CreditReferenceError


PROMPT_VERSION = "sgcd-table5-v1"

ROLE = (
    "You are a training-time credit analyst. Given one task and several policy-generated sibling rollouts with "
    "verifier outcomes, write a concise stepwise credit reference."
)

SECTION_KEYS = ("state_checks", "successful_branches", "failed_branches", "deviation_points", "literals_to_mask")
SECTION_TITLES = {
    "state_checks": "State checks",
    "successful_branches": "Successful branches",
    "failed_branches": "Failed branches and why",
    "deviation_points": "Deviation points",
    "literals_to_mask": "Literals to mask",
}
SECTION_DESCRIPTIONS = {
    "state_checks": "state checks that successful siblings establish",
    "successful_branches": "reusable successful action branches",
    "failed_branches": "failed branches and why they appear wrong",
    "deviation_points": "likely deviation points where failures depart from successful evidence",
    "literals_to_mask": (
        "a bullet list of literals or values that should remain masked during credit scoring (`- none` if none)"
    ),
}
RULES = (
    "Use only information present in the visible traces.",
    "Do not quote hidden labels, evaluator reports, credentials, or final answer literals. Values shown as "
    "<MASKED:...> were removed on purpose: keep them masked and do not guess them.",
    "Prefer abstract state checks and action choices over copying task-specific values.",
    "Be concise: short bullets, at most about 300 words in total.",
)

DEFAULT_MAX_PROMPT_CHARS = 48_000
DEFAULT_MAX_OBSERVATION_CHARS = 1_500
MIN_OBSERVATION_CHARS = 120
MIN_PROMPT_CHARS = 4_000  # instructions (~1.3k chars) + the task (a quarter) + room for one success/failure pair
_MAX_ARG_CHARS = 160


# ---------------------------------------------------------------------------------------------------- rendering


def content_text(content: Any) -> str:
    """The text of a message `content` (a string, `None`, or a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                parts.append(str(part.get("text") or part.get("content") or ""))
            else:
                parts.append(str(part))
        return "\n".join(p for p in parts if p)
    return str(content)


def tool_call_parts(call: Any) -> tuple[str, Any]:
    """`(name, arguments)` of a tool call in TRL (`{"function": {"name", "arguments"}}`) or flat format.

    String arguments (OpenAI style) are parsed as JSON when possible.
    """
    if not isinstance(call, dict):
        return str(call), {}
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    name = str(function.get("name") or "?")
    args = function.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            pass
    return name, args


def truncate(text: str, max_chars: int) -> str:
    """Cuts `text` to `max_chars` characters, saying how much was dropped."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    marker = f" …[+{len(text) - max_chars} chars]"
    return text[: max(0, max_chars - len(marker))] + marker if max_chars > len(marker) else text[:max_chars]


def format_call(name: str, args: Any, max_value_chars: int = _MAX_ARG_CHARS) -> str:
    """`name(key=value, ...)` with JSON values, each value cut to `max_value_chars`."""
    if isinstance(args, dict):
        rendered = ", ".join(
            f"{k}={truncate(json.dumps(v, ensure_ascii=False, sort_keys=True), max_value_chars)}"
            for k, v in args.items()
        )
    elif args in (None, "", [], {}):
        rendered = ""
    else:
        rendered = truncate(args if isinstance(args, str) else json.dumps(args, ensure_ascii=False), max_value_chars)
    return f"{name}({rendered})"


def outcome_label(sibling: Sibling) -> str:
    return f"{'SUCCESS' if sibling.success else 'FAILURE'} (reward {sibling.reward:.3g})"


def render_sibling(
    sibling: Sibling, max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS, index: int | None = None
) -> str:
    """Renders one sibling's visible trace compactly.

    Tool calls are numbered (`[k] name(args)`), tool observations follow as `=> name: content`, and assistant, user
    and observation texts are each cut to `max_observation_chars`. System messages are skipped (the task block shows
    them once).

    Args:
        sibling: the rollout (already sanitized).
        max_observation_chars: cap for each message text and tool observation.
        index: the sibling's 1-based number in its group, shown in the header.
    """
    calls = 0
    lines = []
    for message in sibling.messages:
        role = message.get("role")
        if role == "system":
            continue
        text = content_text(message.get("content")).strip()
        if role == "tool":
            name = message.get("name") or "tool"
            lines.append(f"  => {name}: {truncate(_one_line(text), max_observation_chars)}")
            continue
        if text:
            lines.append(f"{role}: {truncate(text, max_observation_chars)}")
        for call in message.get("tool_calls") or []:
            calls += 1
            name, args = tool_call_parts(call)
            lines.append(f"  [{calls}] {truncate(format_call(name, args), max(max_observation_chars, 200))}")
    label = f"Sibling {index}" if index is not None else "Sibling"
    header = f"### {label}: {outcome_label(sibling)}, {calls} tool call{'s' if calls != 1 else ''}"
    return "\n".join([header, *lines]) if lines else header + "\n(no visible actions)"


def render_task(prompt: list[dict[str, Any]] | str, max_chars: int) -> str:
    """Renders the task: the system instructions (at most half the budget) and the user turns."""
    if isinstance(prompt, str):
        return truncate(prompt.strip(), max_chars)
    system = "\n".join(content_text(m.get("content")) for m in prompt if m.get("role") == "system").strip()
    user = "\n".join(content_text(m.get("content")) for m in prompt if m.get("role") != "system").strip()
    if not system:
        return truncate(user, max_chars)
    user = truncate(user, max(max_chars // 2, max_chars - len(system) - 40))
    system = truncate(system, max(0, max_chars - len(user) - 40))
    return f"Agent instructions (system prompt):\n{system}\n\nTask:\n{user}"


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ⏎ ", text)


def _strip_prompt_prefix(group: SiblingGroup, sibling: Sibling) -> Sibling:
    """Drops the leading messages of a transcript that repeat the prompt (some rollout functions include it)."""
    if isinstance(group.prompt, str) or not group.prompt:
        return sibling
    n = 0
    for prompt_msg, msg in zip(group.prompt, sibling.messages, strict=False):
        if prompt_msg.get("role") == msg.get("role") and content_text(prompt_msg.get("content")) == content_text(
            msg.get("content")
        ):
            n += 1
        else:
            break
    if n == 0:
        return sibling
    return Sibling(messages=sibling.messages[n:], reward=sibling.reward, success=sibling.success)


# ---------------------------------------------------------------------------------------------------- fallback


@dataclass
class SiblingSelection:
    """Which siblings a prompt shows and how they were rendered.

    Args:
        indices: 0-based indices of the shown siblings, in group order.
        renderings: their rendered traces, aligned with `indices`.
        observation_chars: the observation cap used.
        fallback: whether the long-context fallback dropped siblings.
        truncated: whether any rendering had to be cut to an equal share of the budget.
    """

    indices: list[int]
    renderings: list[str]
    observation_chars: int
    fallback: bool = False
    truncated: bool = False

    @property
    def chars(self) -> int:
        return _joined_len(self.renderings)


def _joined_len(renderings: Sequence[str]) -> int:
    return sum(len(r) for r in renderings) + 2 * max(0, len(renderings) - 1)


def preference_order(group: SiblingGroup, lengths: Sequence[int]) -> tuple[list[int], list[int]]:
    """Successes shortest first and failures longest first (paper App. B), ties broken by sampling order."""
    successes = sorted((i for i, s in enumerate(group.siblings) if s.success), key=lambda i: (lengths[i], i))
    failures = sorted((i for i, s in enumerate(group.siblings) if not s.success), key=lambda i: (-lengths[i], i))
    return successes, failures


def select_siblings(
    group: SiblingGroup,
    budget_chars: int,
    max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS,
    min_observation_chars: int = MIN_OBSERVATION_CHARS,
) -> SiblingSelection:
    """Chooses and renders the siblings shown to the credit analyst within `budget_chars` (the fallback rule).

    Args:
        group: the sanitized group.
        budget_chars: characters available for the sibling blocks.
        max_observation_chars: observation cap when everything fits.
        min_observation_chars: the smallest observation cap the fallback shrinks to before dropping siblings.
    """
    siblings = [_strip_prompt_prefix(group, s) for s in group.siblings]

    def render(indices: Sequence[int], obs: int) -> list[str]:
        return [render_sibling(siblings[i], obs, index=i + 1) for i in sorted(indices)]

    everything = render(range(len(siblings)), max_observation_chars)
    if _joined_len(everything) <= budget_chars:
        return SiblingSelection(list(range(len(siblings))), everything, max_observation_chars)

    successes, failures = preference_order(group, [len(r) for r in everything])
    # Pairs of (success, failure): the smaller class is fully covered, the larger one contributes its preferred members.
    n_pairs = min(len(successes), len(failures))
    if n_pairs == 0:  # not a mixed group: keep the preferred members of its only class
        ordered = successes or failures
        chosen = []
        for i in ordered:
            if _joined_len(render([*chosen, i], max_observation_chars)) > budget_chars and chosen:
                break
            chosen.append(i)
        candidates = [chosen]
    else:
        candidates = [successes[:k] + failures[:k] for k in range(n_pairs, 0, -1)]
    obs_caps = []
    obs = max_observation_chars
    while obs > min_observation_chars:
        obs_caps.append(obs)
        obs //= 2
    obs_caps.append(min_observation_chars)
    for k, chosen in enumerate(candidates):
        caps = obs_caps if k == 0 else [min_observation_chars]
        for cap in caps:
            rendered = render(chosen, cap)
            if _joined_len(rendered) <= budget_chars:
                return SiblingSelection(sorted(chosen), rendered, cap, fallback=True)
    chosen = candidates[-1]
    rendered = render(chosen, min_observation_chars)
    share = max(1, (budget_chars - 2 * (len(rendered) - 1)) // max(1, len(rendered)))
    rendered = [truncate(r, share) for r in rendered]
    return SiblingSelection(sorted(chosen), rendered, min_observation_chars, fallback=True, truncated=True)


# ---------------------------------------------------------------------------------------------------- prompt


@dataclass
class CreditPrompt:
    """The chat messages sent to the credit analyst and the sibling selection behind them."""

    messages: list[dict[str, str]]
    selection: SiblingSelection

    @property
    def chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


def _output_spec() -> str:
    lines = ["Write exactly five sections with these markdown headers, in this order:"]
    for i, key in enumerate(SECTION_KEYS, start=1):
        lines.append(f"## {SECTION_TITLES[key]}\n({i}) {SECTION_DESCRIPTIONS[key]}")
    return "\n".join(lines)


def compose_credit_prompt(
    group: SiblingGroup,
    max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS,
) -> CreditPrompt:
    """Like `build_credit_prompt`, also returning the sibling selection (for fallback diagnostics)."""
    if max_chars < MIN_PROMPT_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_PROMPT_CHARS} to hold the instructions, got {max_chars}.")
    rules = "\n".join(f"- {rule}" for rule in RULES)
    task = render_task(group.prompt, max_chars // 4)
    n_success, n = len(group.successes), len(group.siblings)

    def user_message(selection: SiblingSelection | None) -> str:
        shown = "" if selection is None else "\n\n".join(selection.renderings)
        note = ""
        if selection is not None and selection.fallback:
            note = (
                f" Only {len(selection.indices)} of them are shown (long-context fallback: the smaller outcome class "
                "plus matched siblings of the other class)."
            )
        return (
            f"# Task\n{task}\n\n"
            f"# Sibling rollouts\nThe policy sampled {n} rollouts for this task: {n_success} succeeded and "
            f"{n - n_success} failed according to the verifier.{note} Tool calls are numbered `[k] name(args)`; tool "
            f"observations follow as `=> tool: result`.\n\n{shown}\n\n"
            f"# Rules\n{rules}\n\n# Output\n{_output_spec()}"
        )

    fixed = len(ROLE) + len(user_message(None)) + 200  # the fallback note
    selection = select_siblings(group, max(0, max_chars - fixed), max_observation_chars=max_observation_chars)
    messages = [{"role": "system", "content": ROLE}, {"role": "user", "content": user_message(selection)}]
    return CreditPrompt(messages=messages, selection=selection)


def build_credit_prompt(
    group: SiblingGroup,
    max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS,
) -> list[dict[str, str]]:
    """Builds the Table 5 chat messages for one (sanitized) sibling group.

    Args:
        group: the group, already passed through the `Sanitizer`.
        max_chars: character budget of the whole prompt (≈ 4 characters per token); triggers the fallback.
        max_observation_chars: cap on each tool observation and message text when everything fits.

    Returns:
        `[{"role": "system", ...}, {"role": "user", ...}]`.
    """
    return compose_credit_prompt(group, max_chars=max_chars, max_observation_chars=max_observation_chars).messages


# ---------------------------------------------------------------------------------------------------- parsing

# Keyword rules on a header's title, most specific first ("State checks that successful siblings establish" is a
# state-check header even though it says "successful").
_TITLE_RULES = (
    ("literals_to_mask", re.compile(r"\bliterals?\b|\bmask")),
    ("deviation_points", re.compile(r"deviat")),
    ("state_checks", re.compile(r"\bstate\b|\bpreconditions?\b")),
    ("failed_branches", re.compile(r"\bfail")),
    ("successful_branches", re.compile(r"\bsuccess")),
)
# A header without markdown or bold markup (a plain, numbered or colon-terminated line) must start with one of these
# titles, so a numbered item such as "2. Failures skip the status check: ..." stays content.
_PLAIN_TITLE_RE = re.compile(
    r"^(?:(?:the )?state checks?|preconditions|(?:reusable )?successful (?:action )?(?:branch|path|strateg)"
    r"|(?:failed|failing|failure) (?:action )?(?:branch|path|mode|attempt)|(?:likely )?deviation points?"
    r"|literals?(?: or values)? (?:to|that should) |masked literals?|values to mask)"
)
_NONE_WORDS = frozenset({"none", "n/a", "na", "nothing", "(none)", "none.", "-", "no literals", "no literals."})
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n```\s*$", re.S)
_BULLET_RE = re.compile(r"^\s*(?:[-*•+]|\d{1,2}[.)])\s+")


@dataclass
class _Header:
    section: str
    style: str  # "md", "bold" or "plain"
    rest: str


@dataclass
class ParsedSections:
    sections: dict[str, str] = field(default_factory=dict)
    fmt: str = "markdown"


def section_of_title(title: str) -> str | None:
    """The section a header title names, or `None`."""
    norm = re.sub(r"[_\-]+", " ", title.lower()).strip()
    for key, regex in _TITLE_RULES:
        if regex.search(norm):
            return key
    return None


def _header(line: str) -> _Header | None:
    text = line.strip()
    if not text:
        return None
    style = "plain"
    md = re.match(r"^#{1,6}\s*(.*)$", text)
    if md:
        style, text = "md", md.group(1)
    elif re.match(r"^[-*•+]\s+(?=\*\*|__)", text):
        text = re.sub(r"^[-*•+]\s+", "", text)  # "- **State checks:** ..."
    elif _BULLET_RE.match(text) and not re.match(r"^\d{1,2}[.)]", text):
        return None  # a bullet item, not a header
    numbered = re.match(r"^(?:section\s*)?\(?\d{1,2}\s*[.):]?\)?\s+", text, re.I)
    if numbered:
        text = text[numbered.end() :]
    if re.match(r"^(\*\*|__)", text):
        style = "bold" if style == "plain" else style
    title, rest = text, ""
    bold = re.match(r"^(\*\*|__)(.+?)\1\s*:?\s*(.*)$", text)
    if bold:
        title, rest = bold.group(2), bold.group(3)
    elif ":" in text:
        title, rest = text.split(":", 1)
    title = title.strip().strip("*_` ").rstrip(":.").strip()
    rest = rest.strip()
    if not title or len(title.split()) > 10:
        return None
    section = section_of_title(title)
    if section is None:
        return None
    if style == "plain" and not _PLAIN_TITLE_RE.match(title.lower() + " "):
        return None
    return _Header(section=section, style=style, rest=rest)


def _split_markdown(text: str) -> dict[str, str]:
    lines = text.splitlines()
    headers = {i: h for i, line in enumerate(lines) if (h := _header(line)) is not None}
    # Prefer the strongest header style used for at least three sections, so numbered items inside a section are not
    # mistaken for headers.
    for style in ("md", "bold"):
        styled = {i: h for i, h in headers.items() if h.style == style}
        if len({h.section for h in styled.values()}) >= 3:
            headers = styled
            break
    sections: dict[str, list[str]] = {}
    current = None
    for i, line in enumerate(lines):
        header = headers.get(i)
        if header is not None and header.section not in sections:
            current = header.section
            sections[current] = [header.rest] if header.rest else []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


def _json_sections(text: str) -> dict[str, str] | None:
    candidate = text.strip()
    fence = _FENCE_RE.match(candidate)
    if fence:
        candidate = fence.group(1).strip()
    if not candidate.startswith("{"):
        return None
    try:
        obj = json.loads(candidate)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    found = _json_dict_sections(obj)
    if len(found) < 2:
        for value in obj.values():  # one level of wrapping: {"credit_reference": {...}}
            if isinstance(value, dict):
                nested = _json_dict_sections(value)
                if len(nested) > len(found):
                    found = nested
    return found


def _json_dict_sections(obj: dict[str, Any]) -> dict[str, str]:
    found = {}
    for key, value in obj.items():
        section = section_of_title(str(key))
        if section is None or section in found:
            continue
        found[section] = _json_value_text(value)
    return found


def _json_value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "\n".join(f"- {_json_item_text(v)}" for v in value)
    if isinstance(value, dict):
        return "\n".join(f"- {k}: {_json_value_text(v)}" for k, v in value.items())
    return str(value)


def _json_item_text(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_json_item_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_json_item_text(v) for v in value)
    return "" if value is None else str(value).strip()


def _meaningful(content: str) -> bool:
    text = re.sub(r"[\s`*_>]+", " ", content).strip().lower()
    return bool(text) and text not in _NONE_WORDS and _BULLET_RE.sub("", text).strip() not in _NONE_WORDS


def extract_literals(content: str) -> list[str]:
    """The literals listed in a "Literals to mask" section (code spans, quoted strings, or bullet texts)."""
    items: list[str] = []
    lines = [ln for ln in content.splitlines() if ln.strip()]
    if len(lines) == 1 and not _BULLET_RE.match(lines[0]) and "`" not in lines[0] and "," in lines[0]:
        lines = [part for part in lines[0].split(",") if part.strip()]
    for raw in lines:
        line = _BULLET_RE.sub("", raw.strip()).strip()
        if not line or line.lower().strip(" .") in _NONE_WORDS or line.lower().startswith("none"):
            continue
        spans = re.findall(r"`([^`]+)`", line)
        if not spans:
            spans = [a or b or c for a, b, c in re.findall(r'"([^"]+)"|“([^”]+)”|\'([^\']{2,})\'', line)]
        if not spans:
            item = re.split(r"\s+(?:—|--|–)\s+|\s+\(", line, maxsplit=1)[0]
            if ": " in item:
                head, tail = item.split(": ", 1)
                item = tail if tail.strip() else head
            spans = [item]
        for span in spans:
            span = span.strip().strip("*_").strip()
            if span and span.lower() not in _NONE_WORDS and span not in items:
                items.append(span)
    return items


def format_credit_reference(sections: dict[str, str]) -> str:
    """Renders sections in the canonical layout (`## Title` headers, Table 5 order, missing sections left out)."""
    blocks = []
    for key in SECTION_KEYS:
        if key in sections:
            body = sections[key].strip() or "- none"
            blocks.append(f"## {SECTION_TITLES[key]}\n{body}")
    return "\n\n".join(blocks)


def parse_credit_reference(text: str | None, min_sections: int = 3) -> CreditReference:
    """Parses an LLM reply into a `CreditReference`, tolerating formatting drift.

    Accepts markdown (`#`, bold or numbered headers, any casing, an optional code fence) and JSON objects keyed by the
    section names. The literals section's items become `masked_literals`.

    Args:
        text: the raw reply.
        min_sections: how many sections must be recognized with non-empty content.

    Raises:
        CreditReferenceError: when the reply is empty or fewer than `min_sections` sections carry content.
    """
    if text is None or not str(text).strip():
        raise CreditReferenceError("empty credit-reference reply")
    text = str(text).strip()
    sections = _json_sections(text)
    fmt = "json"
    if not sections:
        fmt = "markdown"
        fence = _FENCE_RE.match(text)
        sections = _split_markdown(fence.group(1) if fence else text)
    meaningful = [k for k, v in sections.items() if _meaningful(v)]
    if len(meaningful) < min_sections or not any(k != "literals_to_mask" for k in meaningful):
        raise CreditReferenceError(
            f"unparseable credit reference: {len(meaningful)} of 5 sections recognized (need {min_sections})"
        )
    literals = extract_literals(sections.get("literals_to_mask", ""))
    return CreditReference(
        text=format_credit_reference(sections),
        masked_literals=literals,
        metadata={"sections": [k for k in SECTION_KEYS if k in sections], "format": fmt},
    )
