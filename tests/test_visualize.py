"""Tests of the credit visualizer on a real credit dump (two `SGCDGRPOTrainer` steps) and on hand-made records."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from datasets import Dataset

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.cli import main
from trl_sgcd.visualize import (
    available_steps,
    load_credit_dump,
    render_html,
    render_png,
    tool_call_positions,
    visualize,
)


torch.set_num_threads(1)
REFERENCE = "some reference <b>with html</b>"
SHADE = re.compile(r"background:rgba\(217,95,2,([0-9.]+)\)")


def parity_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def credit_run(tiny_model_path, tmp_path_factory):
    """The output directory of two SGCD steps on a tiny model, with a credit dump at every step."""
    output_dir = tmp_path_factory.mktemp("credit-run")
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"book flight F{i} for user u{i}"}]} for i in range(16)]
    )
    args = SGCDConfig(
        output_dir=str(output_dir),
        credit_log_steps=1,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        max_steps=2,
        dynamic_sampling=False,
        segment_min_divergence=0.0,
        disable_tqdm=True,
        save_strategy="no",
        seed=7,
    )
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=dataset,
        credit_reference=lambda group: REFERENCE,
    )
    trainer.train()
    return output_dir


def test_visualizer_renders_a_real_credit_dump(credit_run, tmp_path):
    assert available_steps(credit_run) == [0, 1]
    by_step = {step: load_credit_dump(credit_run, step) for step in (0, 1)}
    boosted_steps = [step for step, records in by_step.items() if any(w > 1 for r in records for w in r["weights"])]
    assert boosted_steps, "the SGCD run produced no weight above 1"
    step = boosted_steps[0]
    records = by_step[step]
    assert [r["row"] for r in records] == list(range(8))

    paths = visualize(credit_run, step=step, out_dir=tmp_path / "viz")
    page = paths["html"].read_text()
    for record in records:
        assert f'id="row-{record["row"]}"' in page
    assert "some reference &lt;b&gt;with html&lt;/b&gt;" in page
    assert "<b>with html</b>" not in page
    boosted = sum(w > 1 and m for r in records for w, m in zip(r["weights"], r["assistant_mask"], strict=True))
    shades = [float(alpha) for alpha in SHADE.findall(page.split("</p>", 1)[1])]  # token spans, legend excluded
    assert len(shades) == boosted and all(alpha > 0 for alpha in shades)
    assert max(shades) == pytest.approx(1.0)  # the strongest weight gets the deepest shade
    assert page.count('title="#') == sum(len(r["tokens"]) for r in records)

    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(paths["png"])
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def _record(row, group, tokens, weights, in_loss, success=True, reference=None):
    return {
        "step": 3,
        "row": row,
        "group": group,
        "reward": float(success),
        "success": success,
        "advantage": 0.5 if success else -0.5,
        "tokens": tokens,
        "weights": weights,
        "assistant_mask": in_loss,
        "credit_mask": in_loss,
        "reference": reference,
    }


TOOL_TOKENS = [
    "<tool_call>",
    '\n{"name": "get',
    '_user"}',
    "\n</tool_call>",
    "<|im_end|>",
    "\n<tool_response>",
    "x\x1e<y>",
    "Done",
]
TOOL_MASK = [1, 1, 1, 1, 1, 0, 0, 1]


def test_html_marks_tool_calls_observations_and_escapes_tokens():
    records = [
        _record(0, 0, TOOL_TOKENS, [1.0, 1.5, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0], TOOL_MASK, reference="Check <id> & go"),
        _record(1, 1, ["ok"], [1.0], [1], success=False),
    ]
    assert tool_call_positions(TOOL_TOKENS) == {0, 1, 2, 3}
    assert tool_call_positions(["a", "<tool_", "call>{}", "b"]) == {1, 2, 3}  # split markup, unterminated call
    page = render_html(records, cap=2.0)
    assert page.count('class="t obs"') == 2
    assert page.count(" call") == 4 + 1  # four tool-call tokens, plus the legend
    assert "x␞&lt;y&gt;" in page and "&lt;tool_call&gt;" in page and "<tool_call>" not in page
    assert "Check &lt;id&gt; &amp; go" in page and "No credit reference" in page
    assert "rgba(217,95,2,0.500)" in page and "rgba(217,95,2,1.000);color:#fff" in page
    assert "Group 1: 0/1 successes" in page


def test_png_greys_out_tokens_outside_the_loss(tmp_path):
    records = [_record(0, 0, TOOL_TOKENS, [1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0], TOOL_MASK)]
    pixels = matplotlib.image.imread(render_png(records, tmp_path / "strip.png"))[..., :3]
    grey = (abs(pixels - 0.78) < 0.02).all(axis=-1)
    orange = (pixels[..., 0] - pixels[..., 2]) > 0.4  # the deep end of the "Oranges" map
    assert grey.sum() > 100 and orange.sum() > 100


def test_dumps_of_several_ranks_are_merged_by_row(tmp_path):
    directory = tmp_path / "sgcd_credit"
    directory.mkdir()
    for rank, rows in ((0, [0, 1]), (1, [2, 3])):
        lines = [json.dumps(_record(r, r // 2, ["t"], [1.0], [1])) for r in reversed(rows)]
        (directory / f"step_000005_rank{rank}.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "step_000002_rank0.jsonl").write_text(json.dumps(_record(0, 0, ["t"], [1.0], [1])) + "\n")
    assert [r["row"] for r in load_credit_dump(tmp_path)] == [0, 1, 2, 3]  # latest step by default
    assert len(load_credit_dump(directory / "step_000002_rank0.jsonl")) == 1
    with pytest.raises(ValueError, match="available steps: \\[2, 5\\]"):
        load_credit_dump(tmp_path, step=4)


def test_cli_visualize(credit_run, tmp_path, capsys):
    assert main(["visualize", str(credit_run), "--step", "1", "--out", str(tmp_path / "out"), "--cap", "2"]) == 0
    assert (tmp_path / "out" / "credit_step_000001.html").is_file()
    assert (tmp_path / "out" / "credit_step_000001.png").stat().st_size > 1000
    assert "credit_step_000001.html" in capsys.readouterr().out
    assert main(["visualize", str(tmp_path / "missing")]) == 2
    assert "No credit dump" in capsys.readouterr().err

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    listed = subprocess.run(
        [sys.executable, "-m", "trl_sgcd.cli", "visualize", str(credit_run), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert listed.returncode == 0 and listed.stdout.split() == ["0", "1"]


def test_html_escapes_row_and_group_of_a_crafted_dump():
    payload = '"><script>document.title="pwned"</script>'
    records = [_record(0, 0, ["a"], [1.5], [1]), _record(1, 1, ["b"], [1.0], [1], success=False)]
    records[0]["row"] = payload
    page = render_html(records, cap=2.0)
    assert "<script>" not in page
    assert page.count("&lt;script&gt;") == 2  # the row in the element id and in the meta line
    records[0]["row"], records[1]["group"] = 0, payload
    page = render_html(records, cap=2.0)
    assert "<script>" not in page
    assert page.count("&lt;script&gt;") == 2  # the group in the section id and in its heading
    assert page.index("Group 0:") < page.index("Group &quot;&gt;")  # integer groups first, others after, as text
