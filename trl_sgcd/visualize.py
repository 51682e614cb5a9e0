"""Credit visualizer: renders the credit dumps of `SGCDConfig(credit_log_steps=N)` as an HTML page and a PNG.

The trainer writes one JSON line per rollout to `output_dir/sgcd_credit/step_XXXXXX_rankR.jsonl` (keys `step`, `row`,
`group`, `reward`, `success`, `advantage`, `tokens`, `weights`, `assistant_mask`, `credit_mask`, `reference`). This
module reads the dump of one step (all ranks) and draws:

- `render_html`: a self-contained page, one section per sibling group with its credit reference, every rollout's
  tokens shaded by its credit weight `W` (white at 1, deepest at the cap `c`), tokens outside the loss (tool
  observations) grey and italic, tool-call spans outlined, and the rollout's reward, success and advantage.
- `render_png`: a heat strip per rollout of `W` over token position (grey where the token is not in the loss).

Hostile dumps: a dump is data from rollouts, tools and providers, so every value from it is HTML-escaped (tokens,
references, row, group, step), numeric fields must be numbers (`ValueError` naming the record otherwise), and the page
carries a Content-Security-Policy that allows no script, so markup that slipped through could still not run.

Simplified: the page has no JavaScript (hover titles only), and tool calls are found by their `<tool_call>` markup
in the decoded tokens, which covers Qwen-style templates; other templates just show no outline. The dump holds the
credit references, which are training-only context: keep the rendered pages with the training outputs.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

from .credit_dump import Record, dump_files, id_order, load_step, row_order
from .credit_dump import available_steps as available_steps  # re-exported for `trl-sgcd visualize --list`


load_credit_dump = load_step
_TOOL_CALL = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.DOTALL)
_SHADE_RGB = (217, 95, 2)  # dark orange: reads as "more credit" and stays distinct from the grey of masked tokens


_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_REQUIRED = ("row", "group", "reward", "success", "advantage", "tokens", "weights", "assistant_mask", "credit_mask")
Label = int | str


def _label(value: object) -> Label:
    """A row or group id: an integer as written by the trainer, anything else as its text."""
    return value if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _short(label: Label, width: int = 12) -> str:
    """A row or group id for a plot label: printable characters only, at most `width` of them."""
    text = "".join(char if char.isprintable() else "?" for char in str(label))
    return text if len(text) <= width else text[: width - 1] + "…"


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Malformed credit dump: {where} must be a number, got a {type(value).__name__}.")
    return float(value)


def _checked(records: Sequence[Record]) -> list[Record]:
    """Copies of the records with every field the page and the plot show of a known type.

    Row and group ids stay integers or become text, tokens and the reference become text, masks booleans; the
    numeric fields must be numbers. Raises `ValueError` naming the record and field of a malformed record.
    """
    checked = []
    for index, record in enumerate(records):
        where = f"record {index}"
        if not isinstance(record, dict):
            raise ValueError(f"Malformed credit dump: {where} is a {type(record).__name__}, not an object.")
        missing = [key for key in _REQUIRED if key not in record]
        if missing:
            raise ValueError(f"Malformed credit dump: {where} has no {', '.join(missing)}.")
        for key in ("tokens", "weights", "assistant_mask", "credit_mask"):
            if not isinstance(record[key], list):
                raise ValueError(f"Malformed credit dump: {where} field {key} must be a list.")
        reference = record.get("reference")
        checked.append(
            {
                **record,
                "row": _label(record["row"]),
                "group": _label(record["group"]),
                "reward": _number(record["reward"], f"{where} reward"),
                "advantage": _number(record["advantage"], f"{where} advantage"),
                "success": bool(record["success"]),
                "tokens": [str(token) for token in record["tokens"]],
                "weights": [_number(w, f"{where} weights[{i}]") for i, w in enumerate(record["weights"])],
                "assistant_mask": [bool(m) for m in record["assistant_mask"]],
                "credit_mask": [bool(m) for m in record["credit_mask"]],
                "reference": None if reference is None else str(reference),
            }
        )
    return checked


def _shade(weight: float, cap: float) -> float:
    """Opacity of the credit colour: 0 at `W = 1`, 1 at `W = cap`."""
    return min(1.0, max(0.0, (weight - 1.0) / (cap - 1.0)))


def _resolve_cap(records: Sequence[Record], cap: float | None) -> float:
    if cap is not None:
        if cap <= 1.0:
            raise ValueError(f"cap must be > 1, got {cap}.")
        return float(cap)
    highest = max((w for record in records for w in record["weights"]), default=1.0)
    return highest if highest > 1.0 else 2.0  # no boosted token: use the paper's default cap for the scale


def tool_call_positions(tokens: Sequence[str]) -> set[int]:
    """Indices of the tokens that overlap a `<tool_call>...</tool_call>` span of the decoded text."""
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token)
    text = "".join(tokens)
    inside: set[int] = set()
    for match in _TOOL_CALL.finditer(text):
        for index, start in enumerate(starts):
            end = start + len(tokens[index])
            if start < match.end() and end > match.start():
                inside.add(index)
    return inside


def _visible(token: str) -> str:
    """The token as display text: line breaks marked, other control characters as their Unicode symbols."""
    shown = []
    for char in token:
        if char == "\n":
            shown.append("↵\n")
        elif char == "\t":
            shown.append("⇥\t")
        elif ord(char) < 0x20:
            shown.append(chr(0x2400 + ord(char)))
        elif char == "\x7f":
            shown.append("␡")
        else:
            shown.append(char)
    return "".join(shown)


def _summary(record: Record) -> dict[str, float]:
    weights = [w for w, m in zip(record["weights"], record["assistant_mask"], strict=False) if m]
    boosted = sum(w > 1.0 for w in weights)
    return {
        "tokens": len(record["tokens"]),
        "loss_tokens": len(weights),
        "boosted": boosted,
        "mean_w": sum(weights) / len(weights) if weights else 1.0,
        "max_w": max(weights, default=1.0),
    }


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin: 28px 0 6px; }
.legend span.t { padding: 1px 6px; }
.group { border-top: 2px solid #999; margin-top: 18px; }
.reference { background: #f5f5f0; border-left: 4px solid #999; padding: 6px 10px; white-space: pre-wrap;
  font-size: 12px; max-height: 220px; overflow: auto; }
.no-reference { color: #777; font-style: italic; font-size: 13px; }
.rollout { margin: 10px 0 14px; }
.meta { font-size: 13px; margin-bottom: 3px; }
.ok { color: #1a7f37; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
.tokens { font-family: ui-monospace, monospace; font-size: 12.5px; line-height: 1.9; white-space: pre-wrap;
  word-break: break-all; border: 1px solid #ddd; padding: 6px; }
span.t { border-radius: 2px; }
span.obs { color: #9a9a9a; font-style: italic; }
span.call { box-shadow: inset 0 -2px 0 #1f5fbf; }
span.nocredit { text-decoration: underline dotted #888; }
"""


def render_html(records: Sequence[Record], cap: float | None = None, title: str | None = None) -> str:
    """A self-contained HTML page of the credit of one step.

    Args:
        records: the step's records (`load_credit_dump`).
        cap: the weight drawn deepest (the run's `credit_cap`); defaults to the highest weight in the records.
        title: page title; defaults to `"SGCD credit, step N"`.
    """
    if not records:
        raise ValueError("No credit records to render.")
    records = _checked(records)
    cap = _resolve_cap(records, cap)
    step = records[0].get("step")
    title = title or f"SGCD credit, step {step}"
    r, g, b = _SHADE_RGB
    groups: dict[Label, list[Record]] = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="legend">Token background: credit weight W, from '
        f'<span class="t" style="background:rgba({r},{g},{b},0.0);border:1px solid #ccc">W = 1</span> to '
        f'<span class="t" style="background:rgba({r},{g},{b},1.0)">W = {cap:.2f}</span>. '
        '<span class="obs">Grey italic</span>: not in the loss (tool observations). '
        '<span class="call">Underlined blue</span>: tool call. '
        '<span class="nocredit">Dotted</span>: in the loss but outside the credit mask. '
        "Hover a token for its position and weight.</p>",
    ]
    for group, members in sorted(groups.items(), key=lambda item: id_order(item[0])):
        successes = sum(m["success"] for m in members)
        reference = next((m["reference"] for m in members if m.get("reference")), None)
        group_label = html.escape(str(group))
        out.append(f'<section class="group" id="group-{group_label}">')
        out.append(f"<h2>Group {group_label}: {successes}/{len(members)} successes</h2>")
        if reference:
            out.append(f'<div class="reference">{html.escape(reference)}</div>')
        else:
            out.append('<div class="no-reference">No credit reference for this group (W &equiv; 1).</div>')
        for record in sorted(members, key=row_order):
            stats = _summary(record)
            verdict = '<span class="ok">success</span>' if record["success"] else '<span class="fail">failure</span>'
            row = html.escape(str(record["row"]))
            out.append(f'<div class="rollout" id="row-{row}">')
            out.append(
                f'<div class="meta">row {row} &middot; reward {record["reward"]:.3f} &middot; '
                f"{verdict} &middot; advantage {record['advantage']:+.3f} &middot; "
                f"mean W {stats['mean_w']:.3f}, max W {stats['max_w']:.3f}, "
                f"{stats['boosted']}/{stats['loss_tokens']} loss tokens boosted</div>"
            )
            calls = tool_call_positions(record["tokens"])
            spans = []
            masks = zip(record["weights"], record["assistant_mask"], record["credit_mask"], strict=False)
            for index, (token, (weight, in_loss, in_credit)) in enumerate(zip(record["tokens"], masks, strict=False)):
                classes = ["t"]
                style = ""
                if not in_loss:
                    classes.append("obs")
                else:
                    if weight > 1.0:
                        alpha = _shade(weight, cap)
                        ink = ";color:#fff" if alpha > 0.6 else ""  # keep deep shades readable
                        style = f' style="background:rgba({r},{g},{b},{alpha:.3f}){ink}"'
                    if not in_credit:
                        classes.append("nocredit")
                if index in calls:
                    classes.append("call")
                tip = f"#{index} W={weight:.3f}" + ("" if in_loss else " (not in loss)")
                spans.append(
                    f'<span class="{" ".join(classes)}"{style} title="{tip}">{html.escape(_visible(token))}</span>'
                )
            out.append(f'<div class="tokens">{"".join(spans)}</div></div>')
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def render_png(records: Sequence[Record], path: str | Path, cap: float | None = None, max_rollouts: int = 64) -> Path:
    """Saves a heat strip per rollout of `W` over token position (grey: not in the loss), grouped by sibling group.

    Args:
        records: the step's records (`load_credit_dump`).
        path: the PNG to write.
        cap: the top of the colour scale; defaults to the highest weight in the records.
        max_rollouts: draw at most this many rollouts (the first ones by row).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not records:
        raise ValueError("No credit records to render.")
    records = _checked(records)
    cap = _resolve_cap(records, cap)
    shown = sorted(records, key=lambda m: (id_order(m["group"]), row_order(m)))[:max_rollouts]
    width = max(1, max(len(m["weights"]) for m in shown))
    grid = np.full((len(shown), width), np.nan)
    masked = np.zeros((len(shown), width), dtype=bool)
    for i, record in enumerate(shown):
        weights = np.asarray(record["weights"], dtype=float)
        in_loss = np.asarray(record["assistant_mask"], dtype=bool)[: len(weights)]
        grid[i, : len(weights)] = weights
        masked[i, : len(weights)] = ~in_loss

    colormap = matplotlib.colormaps["Oranges"].with_extremes(bad="white")  # white: past the end of a rollout
    figure, axis = plt.subplots(figsize=(11, 1.2 + 0.32 * len(shown)), dpi=120)
    image = axis.imshow(
        np.ma.masked_invalid(np.where(masked, np.nan, grid)),
        aspect="auto",
        cmap=colormap,
        vmin=1.0,
        vmax=cap,
        interpolation="nearest",
    )
    grey = np.zeros((len(shown), width, 4))
    grey[masked] = (0.78, 0.78, 0.78, 1.0)
    axis.imshow(grey, aspect="auto", interpolation="nearest")
    labels = [
        f"g{_short(m['group'])} r{_short(m['row'])} {'✓' if m['success'] else '✗'} R={m['reward']:.2f} A={m['advantage']:+.2f}"
        for m in shown
    ]
    # parse_math=False: a "$" in a dump's text is drawn as is, never parsed as mathtext.
    axis.set_yticks(range(len(shown)), labels, fontsize=8, family="monospace", parse_math=False)
    for i in range(1, len(shown)):
        if shown[i]["group"] != shown[i - 1]["group"]:
            axis.axhline(i - 0.5, color="black", linewidth=1.2)
    axis.set_xlabel("completion token position")
    step = _short(shown[0].get("step"))
    suffix = f" (first {len(shown)} of {len(records)} rollouts)" if len(shown) < len(records) else ""
    axis.set_title(f"SGCD credit weights W, step {step}{suffix}; grey: not in the loss", fontsize=10, parse_math=False)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.025, pad=0.01)
    colorbar.set_label("W")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def visualize(
    path: str | Path, step: int | None = None, out_dir: str | Path | None = None, cap: float | None = None
) -> dict[str, Path]:
    """Renders one step's credit dump to `credit_step_XXXXXX.html` and `.png`.

    Args:
        path: a training `output_dir`, its `sgcd_credit/` folder, or one dump file.
        step: the step to render; defaults to the latest.
        out_dir: where to write; defaults to the folder holding the dump files.
        cap: the weight drawn deepest (the run's `credit_cap`); defaults to the highest weight in the dump.

    Returns:
        `{"html": path, "png": path}`
    """
    steps = dump_files(path)
    step = max(steps) if step is None else step
    records = load_credit_dump(path, step)
    out_dir = Path(out_dir) if out_dir is not None else steps[step][0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / f"credit_step_{step:06d}.html"
    html_path.write_text(render_html(records, cap=cap), encoding="utf-8")
    png_path = render_png(records, out_dir / f"credit_step_{step:06d}.png", cap=cap)
    return {"html": html_path, "png": png_path}
