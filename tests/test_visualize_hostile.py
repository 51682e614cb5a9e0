"""A hostile credit dump, written by the project's dump writer, rendered by `trl-sgcd visualize`, opened in Chromium.

Every payload, if it ran, would mark the page (`document.title` and a `data-xss-N` attribute on `<html>`, built at run
time so that the payload's own text never contains the marker). The test reads the DOM headless Chromium ends with and
checks that no marker is there while the page's own content is. Two controls show the check can fail: the same page
rendered with escaping switched off runs the payloads, and the page's Content-Security-Policy alone still stops them.
"""

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

import trl_sgcd.visualize as visualize_module
from trl_sgcd.cli import main
from trl_sgcd.credit_dump import dump_path, write_batch
from trl_sgcd.sampling import GlobalRollouts
from trl_sgcd.siblings import CreditReference


torch.set_num_threads(1)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MARKER = "XSSRAN"


def _js(n: int) -> str:
    """Script that marks the top page with `data-xss-n` and its title, if it ever runs (no `"`: fits any attribute)."""
    return f"top.document.documentElement.setAttribute('data-xss-{n}','XSS'+'RAN');top.document.title='XSS'+'RAN{n}'"


PAYLOADS = [
    f"<script>{_js(0)}</script>",
    f'"><img src=x onerror="{_js(1)}">',
    f'\'><svg onload="{_js(2)}">',
    f'<iframe src="javascript:{_js(3)}"></iframe>',
    f'<a href="javascript:{_js(4)}" id="xss-link">click</a>',
    f'</script><script>{_js(5)}</script>{{"a": "</script>"}}',
    f"</title></style></textarea><script>{_js(6)}</script>",
    f'<details open ontoggle="{_js(7)}">',
    f'<body onload="{_js(8)}">',
    f"\u2028\u2029</script><script>{_js(9)}//\u2028</script>",
    f'<meta http-equiv="refresh" content="0;url=javascript:{_js(10)}">',
    f'<object data="javascript:{_js(11)}"></object><embed src="javascript:{_js(12)}">',
]
HOSTILE = "".join(PAYLOADS)
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "section", "div", "span"}
ALLOWED_ATTRIBUTES = {"lang", "charset", "http-equiv", "content", "class", "style", "id", "title"}


def _pieces(text: str, width: int = 7) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


def write_hostile_dump(output_dir) -> None:
    """Step 1 of a run: rank 0 by `write_batch` (raw, so no masking softens a payload), rank 1 a hand-edited file."""
    pieces = [HOSTILE, *_pieces(HOSTILE), "<tool_call>", HOSTILE, "</tool_call>"]
    n = len(pieces)
    messages = [
        {"role": "assistant", "content": HOSTILE, "tool_calls": [{"name": HOSTILE, "arguments": {HOSTILE: HOSTILE}}]},
        {"role": "tool", "content": HOSTILE},
    ]
    rollouts = GlobalRollouts(
        prompts=[HOSTILE, HOSTILE],
        completions=[messages, HOSTILE],
        rewards=[1.0, 0.0],
        num_generations=2,
        success_threshold=1.0,
        metadata=[{HOSTILE: HOSTILE, "task_id": HOSTILE}, {}],
        local_start=0,
        local_end=2,
    )
    ids = list(range(n))
    write_batch(
        dump_path(str(output_dir), 1, 0),
        step=1,
        rollouts=rollouts,
        output={
            "completion_ids": torch.tensor([ids, ids]),
            "completion_mask": torch.ones(2, n, dtype=torch.long),
            "advantages": torch.tensor([0.5, -0.5]),
        },
        loss_mask=torch.tensor([[i % 3 != 2 for i in ids]] * 2),
        local_refs=[CreditReference(text=HOSTILE), None],
        weights=torch.linspace(1.0, 2.0, n).repeat(2, 1),
        credit_mask=torch.ones(2, n, dtype=torch.bool),
        sequence_advantages=torch.tensor([0.5, -0.5]),
        decode=lambda t: pieces[t[0]],
        raw=True,
    )
    edited = {
        "step": HOSTILE,
        "row": HOSTILE,
        "group": HOSTILE,
        "reward": 0.25,
        "success": HOSTILE,
        "advantage": -0.25,
        "tokens": [HOSTILE, "ok"],
        "weights": [1.5, 1.0],
        "assistant_mask": [1, 0],
        "credit_mask": [1, 1],
        "reference": HOSTILE,
        HOSTILE: {HOSTILE: [HOSTILE]},
    }
    with open(dump_path(str(output_dir), 1, 1), "w") as f:
        f.write(json.dumps(edited) + "\n")


class _Markup(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes += [(name, value or "") for name, value in attrs]


def _dom(page, tmp_path, *flags) -> str:
    """The DOM headless Chromium ends with after loading `page` (no network, a fresh profile)."""
    if CHROMIUM is None:
        raise AssertionError("chromium is not installed (SGCD_REQUIRE_CHROMIUM is set: .ci/run installs it)")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *flags,
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    return result.stdout


def _markers(dom: str) -> set[str]:
    """The payloads that ran: `data-xss-N` attributes on the root element and a marked title."""
    root = re.search(r"<html[^>]*>", dom).group(0)
    title = re.search(r"<title>(.*?)</title>", dom, re.DOTALL)
    ran = set(re.findall(r"data-xss-(\d+)", root))
    if title and MARKER in title.group(1):
        ran.add("title")
    return ran | ({"text"} if MARKER in dom else set())


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    run = tmp_path_factory.mktemp("hostile-run")
    write_hostile_dump(run)
    out = run / "pages"
    assert main(["visualize", str(run), "--out", str(out)]) == 0
    return out / "credit_step_000001.html"


def test_hostile_dump_renders_with_no_foreign_markup(hostile_page):
    page = hostile_page.read_text(encoding="utf-8")
    parser = _Markup()
    parser.feed(page)
    assert parser.tags <= ALLOWED_TAGS, parser.tags - ALLOWED_TAGS
    names = {name for name, _ in parser.attributes}
    assert names <= ALLOWED_ATTRIBUTES, names - ALLOWED_ATTRIBUTES
    assert page.count("<script") == 0 and page.count("<meta") == 2  # charset and the Content-Security-Policy
    # Whole payloads on the page, as text: 2 tokens in each of the writer's 2 rollouts, the group's reference; the
    # edited record's row (element id and meta line), group (id and heading), reference and token.
    assert page.count("&lt;script&gt;") == 11 * HOSTILE.count("<script>")
    assert "\u2028" in page and "\u2029" in page
    records = visualize_module.load_credit_dump(hostile_page.parent.parent, 1)
    first = visualize_module.render_html(records[::-1])  # the edited record first: its step makes the title
    assert first.count("<title>SGCD credit, step " + html.escape(HOSTILE) + "</title>") == 1
    parser = _Markup()
    parser.feed(first)
    assert parser.tags <= ALLOWED_TAGS and {name for name, _ in parser.attributes} <= ALLOWED_ATTRIBUTES


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("SGCD_REQUIRE_CHROMIUM"),
    reason="headless Chromium is not installed (the Debian package `chromium`; .ci/run installs it)",
)
def test_no_script_of_a_hostile_dump_runs_in_chromium(hostile_page, tmp_path, monkeypatch):
    page = hostile_page.read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', page).group(0)
    without_csp = tmp_path / "escaped-only.html"
    without_csp.write_text(page.replace(csp, ""), encoding="utf-8")
    for target, flags in (
        (hostile_page, ()),
        (hostile_page, ("--virtual-time-budget=2000",)),
        (without_csp, ("--virtual-time-budget=2000",)),  # escaping alone, no policy
    ):
        dom = _dom(target, tmp_path, *flags)
        assert _markers(dom) == set(), (target.name, flags)
        assert "<title>SGCD credit, step " in dom and "Group 0: 1/2 successes" in dom
        assert 'class="tokens"' in dom and "&lt;script&gt;" in dom and "&lt;/tool_call&gt;" in dom

    # Controls: with escaping switched off, the same dump runs its payloads; the page's policy alone stops them.
    monkeypatch.setattr(visualize_module.html, "escape", lambda text, quote=True: text)
    records = visualize_module.load_credit_dump(hostile_page.parent.parent, 1)
    raw_page = visualize_module.render_html(records)
    unescaped = tmp_path / "unescaped.html"
    unescaped.write_text(raw_page.replace(csp, ""), encoding="utf-8")
    ran = _markers(_dom(unescaped, tmp_path, "--virtual-time-budget=2000"))
    assert {"0", "1", "2", "5", "6", "8", "9", "title"} <= ran, ran  # script, onerror, onload, </script> breakouts
    policy_only = tmp_path / "policy-only.html"
    policy_only.write_text(raw_page, encoding="utf-8")
    assert csp in raw_page
    assert _markers(_dom(policy_only, tmp_path, "--virtual-time-budget=2000")) == set()


def test_malformed_numbers_are_refused_by_name(tmp_path, capsys):
    record = {
        "step": 0,
        "row": 0,
        "group": 0,
        "reward": "<b>1</b>",
        "success": True,
        "advantage": 0.0,
        "tokens": ["a"],
        "weights": [1.0],
        "assistant_mask": [1],
        "credit_mask": [1],
    }
    with pytest.raises(ValueError, match=r"record 0 reward must be a number, got a str"):
        visualize_module.render_html([record])
    record["reward"], record["weights"] = 1.0, ["<i>2</i>"]
    with pytest.raises(ValueError, match=r"record 0 weights\[0\] must be a number"):
        visualize_module.render_png([record], tmp_path / "x.png")
    del record["tokens"]
    (tmp_path / "sgcd_credit").mkdir()
    (tmp_path / "sgcd_credit" / "step_000000_rank0.jsonl").write_text(json.dumps(record) + "\n")
    assert main(["visualize", str(tmp_path)]) == 2
    assert "record 0 has no tokens" in capsys.readouterr().err
