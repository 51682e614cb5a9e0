"""Localization benchmark: where does the credit weight land, per credit reference, on the offline airline env?

For each warm start (a tiny Qwen3 SFT-initialised on the scripted expert's conversations, from its own seed) and each
reference in {oracle, contrast, sibling_context, uniform}, the trainer runs a few steps at learning rate 0 (it
measures the warm start; nothing is learned) with the credit dumps on, on tasks that carry the expert's actions. From
the dumps:

- failed rollouts: the per-rollout *lift* of the extra weight `W - 1` before, on and after the first deviation from
  the expert's path (`first_deviation`): `(share of the rollout's extra weight in the region) / (share of its credited
  tokens in the region)`; 1 = no localization, `on` > 1 = the weight lands on the wrong call;
- successful rollouts: the same lift on the expert's decision tokens (the rollout's write calls that the expert makes;
  its final answer when the expert makes no write);
- both by task category; 95% intervals over rollouts (normal approximation) and, per reference, over warm starts.

`oracle` is `OracleCreditReference` (the scripted expert: the upper bound of what a reference could say), `contrast`
is `ContrastCreditReference()`, `sibling_context` the successful siblings' traces as teacher context, and `uniform`
the contrast reference's weights spread evenly over each rollout (exactly 1.0 by construction: the control).

    python benchmarks/localization.py --quick --out /tmp/loc         # the CI-sized run (see `--quick`)
    python benchmarks/localization.py                                 # writes docs/results/localization.json + .png

Segmenter options. Each run trains with the segmenter options given as flags (`--baseline`, `--signed`,
`--noise-floor`; the `SGCDConfig` defaults otherwise) and dumps its per-token credit features. The segmenter is then
re-run on the same dumped features for every option in `--variants` (segment baselines, each unsigned and signed),
so all options are compared on the very same rollouts; the re-run of the trained option must reproduce the weights
the trainer dumped (`max_weight_diff` in the report). A reference's top-level `lift` is that of the flags' option.
A run directory that already holds the dumps of the same run (`run.json`: warm start, reference, tasks, steps) is
measured again without training, so new options can be compared on old rollouts.

Dev / held-out. The warm starts split into dev ones (the first `--dev`), measured on the dev half of a fixed pool
of test-split tasks (never seen by the warm starts' SFT), and held-out ones, measured on the other half. Choose
options on `--split dev`, then report them with `--split held_out`; `--split all` runs both.
All runs use `torch.set_num_threads(1)`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from trl_sgcd.credit.segmenter import BASELINES, SegmenterConfig


REFERENCES = ("oracle", "contrast", "sibling_context", "uniform")
REGIONS = ("before", "on", "after")
# What each pipeline stage gave, from the training logs (mean over steps): where a missing lift comes from.
STAGE_KEYS = (
    "reward",
    "sgcd/groups/mixed_frac",
    "sgcd/reference/groups_with_reference",
    "sgcd/divergence/mean",
    "sgcd/divergence/max",
    "sgcd/segments/count",
    "sgcd/segments/selected_token_frac",
    "sgcd/weights/mean",
    "sgcd/weights/boosted_frac",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/localization")
    parser.add_argument("--results", default=None, help="JSON path (default docs/results/localization.json)")
    parser.add_argument("--warm-starts", type=int, default=3)
    parser.add_argument("--dev", type=int, default=1, help="the first N warm starts are the dev split")
    parser.add_argument("--references", nargs="+", default=list(REFERENCES), choices=REFERENCES)
    parser.add_argument("--steps", type=int, default=6, help="measurement steps per warm start and reference")
    parser.add_argument("--sft-examples", type=int, default=512)
    parser.add_argument("--sft-epochs", type=float, default=8.0)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--max-completion-length", type=int, default=192)
    parser.add_argument("--noise-floor", type=float, default=0.0, help="segment_noise_floor of the runs")
    parser.add_argument("--signed", action="store_true", help="segment_signed=True in the runs")
    parser.add_argument(
        "--baseline", default=SegmenterConfig().baseline, choices=BASELINES, help="segment_baseline of the runs"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[b + s for b in BASELINES for s in ("", "+signed")],
        help="segmenter options re-run on the dumped features: a segment baseline, optionally '+signed'",
    )
    parser.add_argument("--split", default="all", choices=("dev", "held_out", "all"), help="warm starts to run")
    parser.add_argument("--tasks", type=int, default=512, help="size of the task pool split into dev / held-out")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI size: 3 small warm starts (hidden 64, 128 examples x 3 epochs), 1 step, 128-token completions, the "
        "paper's rule as the only other option",
    )
    args = parser.parse_args(argv)
    for variant in args.variants:
        if variant.removesuffix("+signed") not in BASELINES:
            parser.error(f"unknown variant {variant!r}: a segment baseline {BASELINES}, optionally '+signed'")
    if args.quick:
        args.sft_examples, args.sft_epochs, args.hidden_size = 128, 3.0, 64
        args.steps, args.max_completion_length = 1, 128
        args.variants = ["rollout"]
    return args


# ---------------------------------------------------------------------------------------------- measurement


def _regions(record: dict) -> tuple[str, dict[str, list[bool]]] | None:
    """`(kind, {region: token mask})` of a dumped rollout: failures before/on/after their deviation, successes on the
    expert's decision tokens; None when the rollout cannot be measured."""
    from trl_sgcd.credit.precision import step_tokens
    from trl_sgcd.envs.offline_airline import completion_tool_calls, first_deviation, task_from_id
    from trl_sgcd.envs.offline_airline.env import canonical_call, is_read

    task = task_from_id(record["metadata"]["task_id"])
    calls = completion_tool_calls(record["messages"])
    tokens, credit = record["tokens"], [bool(c) for c in record["credit_mask"]]
    if not record["success"]:
        index = first_deviation(task, calls)
        if index is None:
            return None
        on = step_tokens(index, len(calls), tokens, credit)
        if on is None:
            return None
        first, last = on.index(True), len(on) - 1 - on[::-1].index(True)
        before = [c and t < first for t, c in enumerate(credit)]
        after = [c and t > last for t, c in enumerate(credit)]
        return "failed", {"before": before, "on": on, "after": after}
    writes = {canonical_call(c["name"], c["arguments"]) for c in task["actions"] if not is_read(c["name"])}
    decision = [False] * len(tokens)
    indices = [
        i
        for i, c in enumerate(calls)
        if isinstance(c.get("arguments"), dict) and canonical_call(c["name"], c["arguments"]) in writes
    ]
    for i in indices or [len(calls)]:
        mask = step_tokens(i, len(calls), tokens, credit)
        if mask is not None:
            decision = [a or b for a, b in zip(decision, mask, strict=True)]
    return ("success", {"decision": decision}) if any(decision) else None


def load_records(dump_dir: Path) -> list[dict]:
    """The dumped records that carry a reference, in step and row order."""
    records = []
    for path in sorted(Path(dump_dir).glob("step_*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        records += sorted((r for r in rows if r["reference"] is not None), key=lambda r: r.get("row", 0))
    return records


def variant_weights(records: list[dict], variant: str, noise_floor: float, uniform: bool) -> list[list[float]]:
    """Each record's weights with the segmenter re-run on its dumped features under `variant` (a segment baseline,
    optionally `+signed`), step by step as the trainer batches them; the trainer's other settings are its defaults."""

    from trl_sgcd import SGCDConfig
    from trl_sgcd.credit import credit_weights, saliency_segments, signed_agreement, uniform_weights

    defaults = SGCDConfig(output_dir="unused", report_to="none", use_cpu=True)
    segmenter = {**vars(defaults.segmenter), "noise_floor": noise_floor, "baseline": variant.removesuffix("+signed")}
    config = SegmenterConfig(**segmenter)
    out: list[list[float]] = []
    for batch, t in _batches(records):
        d = t["d"] * signed_agreement(t["log_ratio"], t["advantages"]) if variant.endswith("+signed") else t["d"]
        saliency, _ = saliency_segments(
            d,
            t["h"],
            t["credit"],
            config,
            groups=t["groups"],
            advantages=t["advantages"],
            assistant_mask=t["assistant"],
        )
        weights = credit_weights(saliency, defaults.credit_gamma, defaults.credit_cap)
        if uniform:
            weights = uniform_weights(weights, t["credit"])
        out += [weights[i, : len(r["tokens"])].tolist() for i, r in enumerate(batch)]
    return out


def _batches(records: list[dict]):
    """`(records, padded tensors)` per dumped step: the trainer's batch layout, rebuilt from the dump."""
    import torch

    steps: dict[int, list[dict]] = {}
    for record in records:
        steps.setdefault(record["step"], []).append(record)
    for batch in steps.values():
        width = max(len(r["tokens"]) for r in batch)

        def pad(key, dtype=torch.float32, batch=batch, width=width):
            rows = [r.get(key) or [0] * len(r["tokens"]) for r in batch]  # log_ratio: only where it was scored
            return torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=dtype)

        credit = pad("credit_mask", torch.bool)
        yield (
            batch,
            {
                "credit": credit,
                "d": pad("divergence") * credit,
                "h": pad("entropy"),
                "log_ratio": pad("log_ratio"),
                "assistant": pad("assistant_mask", torch.bool),
                "groups": torch.tensor([r["group"] for r in batch]),
                "advantages": torch.tensor([r["sequence_advantage"] for r in batch]),
            },
        )


def divergence_by_region(records: list[dict]) -> dict:
    """On failed rollouts, the mean divergence per credited token before, on and after the first deviation (mean over
    rollouts), raw and in excess of the successful siblings' at the aligned position: whether the teacher's
    divergence itself singles out the deviation."""
    from trl_sgcd.credit import position_baseline

    raw: dict[str, list[float]] = {region: [] for region in REGIONS}
    excess: dict[str, list[float]] = {region: [] for region in REGIONS}
    for batch, t in _batches(records):
        base = position_baseline(t["d"], t["credit"], t["assistant"], t["groups"], t["advantages"] > 0)
        for i, record in enumerate(batch):
            regions = record["_regions"] if "_regions" in record else _regions(record)
            if regions is None or regions[0] != "failed":
                continue
            for region, mask in regions[1].items():
                cells = [k for k, m in enumerate(mask) if m and record["credit_mask"][k]]
                if cells:
                    raw[region].append(float(t["d"][i, cells].mean()))
                    excess[region].append(float((t["d"][i, cells] - base[i, cells]).mean()))
    return {
        "raw": {r: mean_ci(v) for r, v in raw.items()},
        "excess_over_successful_siblings": {r: mean_ci(v) for r, v in excess.items()},
    }


def rollout_lifts(dump_dir: Path | list[dict], weights: list[list[float]] | None = None) -> list[dict]:
    """Per measurable rollout: kind, category, whether it got extra weight and, if it did, the lift of each region.

    `dump_dir` is a dump folder or its records (`load_records`); `weights` replaces the dumped weights."""
    records = load_records(dump_dir) if isinstance(dump_dir, (str, Path)) else dump_dir
    out = []
    for k, record in enumerate(records):
        regions = record["_regions"] if "_regions" in record else _regions(record)
        if regions is None:
            continue
        kind, masks = regions
        credit = [bool(c) for c in record["credit_mask"]]
        row_weights = record["weights"] if weights is None else weights[k]
        extra = [max(w - 1.0, 0.0) if c else 0.0 for w, c in zip(row_weights, credit, strict=True)]
        total, n = math.fsum(extra), sum(credit)
        row = {"kind": kind, "category": record["metadata"].get("category"), "weighted": total > 0}
        if total <= 0:  # no extra weight: no lift, but it counts in the coverage
            out.append(row)
            continue
        lifts = {}
        for name, mask in masks.items():
            share = sum(m and c for m, c in zip(mask, credit, strict=True)) / n
            if share > 0:
                lifts[name] = (math.fsum(e for e, m in zip(extra, mask, strict=True) if m) / total) / share
        out.append({**row, **lifts})
    return out


def rollout_counts(records: list[dict]) -> dict:
    """How many dumped rollouts with a reference could be measured at all (before any weight is looked at)."""
    regions = [record["_regions"] if "_regions" in record else _regions(record) for record in records]
    return {
        "rollouts_with_reference": len(records),
        "failed": sum(not r["success"] for r in records),
        "failed_with_deviation": sum(r is not None and r[0] == "failed" for r in regions),
        "success_with_decision": sum(r is not None and r[0] == "success" for r in regions),
    }


def mean_ci(values: list[float]) -> dict:
    """Mean and normal-approximation 95% interval (`[mean, mean]` for a single value)."""
    values = [v for v in values if v == v]
    if not values:
        return {"mean": None, "ci": [None, None], "n": 0}
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(values)}


def summarize(rows: list[dict], categories: bool = True) -> dict:
    """Lifts on failed rollouts (per region) and on successful ones' decision tokens; `categories`: also by task
    category."""
    failed = [r for r in rows if r["kind"] == "failed"]
    success = [r for r in rows if r["kind"] == "success"]
    on = mean_ci([r["on"] for r in failed if "on" in r])
    summary = {
        "lift": on["mean"],
        "ci": on["ci"],
        "failed_rollouts": on["n"],
        # Share of the measurable failed rollouts that got any extra weight, and the lift over all of them with an
        # unweighted rollout counted as 1 (no localization): what the option does for every failure, not just the
        # ones it weights.
        "coverage": on["n"] / len(failed) if failed else None,
        "lift_all_failed": mean_ci([r.get("on", 1.0) for r in failed]),
        "failed": {region: mean_ci([r[region] for r in failed if region in r]) for region in REGIONS},
        "success_decision": mean_ci([r["decision"] for r in success if "decision" in r]),
        "by_category": {},
    }
    for category in sorted({r["category"] for r in rows if r["category"]} if categories else ()):
        summary["by_category"][category] = {
            "failed_on": mean_ci([r["on"] for r in failed if r["category"] == category and "on" in r]),
            "success_decision": mean_ci(
                [r["decision"] for r in success if r["category"] == category and "decision" in r]
            ),
        }
    return summary


# ---------------------------------------------------------------------------------------------- runs


def warm_start(name: str, seed: int, args, out: Path) -> str:
    from trl_sgcd.warm_start import offline_airline_base_model, sft_warm_start

    path = out / name / "sft"
    if not (path / "config.json").exists():
        base = offline_airline_base_model(out / name / "base", hidden_size=args.hidden_size, seed=seed)
        sft_warm_start(base, path, num_examples=args.sft_examples, num_epochs=args.sft_epochs, seed=seed)
    return str(path)


def split_tasks(split: str, pool: int) -> list[dict]:
    """The dev (even positions) or held-out (odd positions) half of a fixed pool of test-split tasks."""
    from trl_sgcd.envs.offline_airline import make_tasks

    tasks = make_tasks(pool, seed=7, split="test")
    return tasks[0::2] if split == "dev" else tasks[1::2]


def measure(model: str, reference: str, seed: int, split: str, args, run_dir: Path, variants: list[str]) -> dict:
    """One run at learning rate 0 (or its dumps, when `run_dir` holds the same run), then the lifts of every option in
    `variants` with the segmenter re-run on the dumped features."""
    key = {
        "model": model,
        "reference": reference,
        "seed": seed,
        "split": split,
        "tasks": args.tasks,
        "steps": args.steps,
        "max_completion_length": args.max_completion_length,
    }
    done = run_dir / "run.json"
    run = json.loads(done.read_text()) if done.exists() else None
    if run is None or run["key"] != key:
        run = {"key": key, **train_and_dump(model, reference, seed, split, args, run_dir)}
        done.write_text(json.dumps(run))
    records = load_records(run_dir / "sgcd_credit")
    for record in records:
        record["_regions"] = _regions(record)
    uniform = reference == "uniform"
    weights = {v: variant_weights(records, v, run["noise_floor"], uniform) for v in variants}
    trained = variant_weights(records, run["option"], run["noise_floor"], uniform)
    pairs = (a - b for r, w in zip(records, trained, strict=True) for a, b in zip(r["weights"], w, strict=True))
    return {
        "variants": {v: rollout_lifts(records, w) for v, w in weights.items()},
        "stages": run["stages"],
        "counts": rollout_counts(records),
        "divergence_by_region": divergence_by_region(records),
        "trained_option": run["option"],
        "max_weight_diff": max(map(abs, pairs), default=0.0),
    }


def train_and_dump(model: str, reference: str, seed: int, split: str, args, run_dir: Path) -> dict:
    """Trains `args.steps` steps at learning rate 0 with the credit dumps on; returns the stage means and options."""
    from transformers import PrinterCallback

    from trl_sgcd import ContrastCreditReference, SGCDGRPOTrainer
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, dataset_from_tasks, offline_airline_reward
    from trl_sgcd.references import OracleCreditReference
    from trl_sgcd.warm_start import offline_airline_rl_config

    shutil.rmtree(run_dir / "sgcd_credit", ignore_errors=True)  # only this run's dumps are measured
    dataset = dataset_from_tasks(split_tasks(split, args.tasks)).shuffle(seed=seed)
    dataset = dataset.add_column("expert_action", [json.dumps(json.loads(t)["actions"]) for t in dataset["task"]])
    mode = {"sibling_context": "sibling_context", "uniform": "uniform"}.get(reference, "sgcd")
    config = offline_airline_rl_config(
        run_dir,
        credit_mode=mode,
        learning_rate=0.0,
        max_steps=args.steps,
        max_completion_length=args.max_completion_length,
        credit_log_steps=1,
        segment_noise_floor=args.noise_floor,
        segment_signed=args.signed,
        segment_baseline=args.baseline,
        disable_tqdm=True,
        seed=seed,
    )
    provider = OracleCreditReference() if reference == "oracle" else ContrastCreditReference()
    trainer = SGCDGRPOTrainer(
        model=model,
        reward_funcs=offline_airline_reward,
        args=config,
        train_dataset=dataset,
        environment_factory=OfflineAirlineEnv,
        credit_reference=provider,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    stages = {}
    for key in STAGE_KEYS:
        values = [h[key] for h in logs if h.get(key) is not None]
        stages[key.removeprefix("sgcd/")] = statistics.fmean(values) if values else None
    return {
        "stages": stages,
        "option": args.baseline + ("+signed" if args.signed else ""),
        "noise_floor": args.noise_floor,
    }


def plot(report: dict, path: Path) -> None:
    """Per split, failed rollouts' lift before / on / after the first deviation, the paper's rule next to the run's
    option, for each written reference; and the option's lift on successful rollouts' decision tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(ax, stats, offset, width, **kwargs):
        means = [s["mean"] or 0.0 for s in stats]
        err = [
            [m - (s["ci"][0] or m) for m, s in zip(means, stats, strict=True)],
            [(s["ci"][1] or m) - m for m, s in zip(means, stats, strict=True)],
        ]
        ax.bar([i + offset for i in range(len(stats))], means, width, yerr=err, capsize=2, **kwargs)

    splits = list(report["pooled_variants"])
    options = list(dict.fromkeys(["rollout", report["option"]]))
    fig, grid = plt.subplots(1, len(splits) + 1, figsize=(5.5 * (len(splits) + 1), 4), squeeze=False)
    axes = list(grid[0])
    colors = {"before": "tab:blue", "on": "tab:orange", "after": "tab:green"}
    for ax, split in zip(axes[:-1], splits, strict=True):
        pooled = report["pooled_variants"][split]
        cells = [(r, o) for r in ("oracle", "contrast") if r in pooled for o in options if o in pooled[r]]
        for k, region in enumerate(REGIONS):
            stats = [pooled[r][o]["failed"][region] for r, o in cells]
            bars(ax, stats, 0.27 * (k - 1), 0.27, color=colors[region], label=region)
        ax.set_xticks(range(len(cells)), [f"{r}\n{o}" for r, o in cells], fontsize=8)
        ax.set_title(f"{split}: failed rollouts, lift around the first deviation", fontsize=10)
        ax.legend(fontsize=8)
    refs = list(report["pooled"])
    bars(axes[-1], [report["pooled"][r]["success_decision"] for r in refs], 0.0, 0.6)
    axes[-1].set_xticks(range(len(refs)), refs, fontsize=8)
    axes[-1].set_title(f"successful rollouts ({report['option']}): decision tokens", fontsize=10)
    for ax in axes:
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("lift (1 = uniform)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    option = args.baseline + ("+signed" if args.signed else "")
    variants = list(dict.fromkeys([option, *args.variants]))
    warm_starts = []
    for w in range(args.warm_starts):
        name, seed, split = f"warm{w}", 100 + w, "dev" if w < args.dev else "held_out"
        if args.split not in ("all", split):
            continue
        model = warm_start(name, seed, args, out)
        entry = {"name": name, "seed": seed, "split": split, "references": {}}
        for reference in args.references:
            result = measure(model, reference, seed, split, args, out / name / reference, variants)
            rows = result["variants"][option]
            entry["references"][reference] = {
                **summarize(rows),
                "stages": result["stages"],
                "counts": result["counts"],
                "divergence_by_region": result["divergence_by_region"],
                "trained_option": result["trained_option"],
                "max_weight_diff": result["max_weight_diff"],
                "variants": {v: summarize(r, categories=False) for v, r in result["variants"].items()},
                "_rows": result["variants"],
            }
            print(
                f"{name} {reference:16s} lift {entry['references'][reference]['lift']} {result['counts']}", flush=True
            )
        warm_starts.append(entry)

    def pooled(split: str | None) -> dict:
        """Per reference and option: the rollouts of the split's warm starts pooled."""
        chosen = [w for w in warm_starts if split is None or w["split"] == split]
        return {
            reference: {
                v: summarize(
                    [r for w in chosen for r in w["references"][reference]["_rows"][v]], categories=v == option
                )
                for v in variants
            }
            for reference in args.references
        }

    def across(split: str | None) -> dict:
        result = {}
        for reference in args.references:
            lifts = [
                w["references"][reference]["lift"]
                for w in warm_starts
                if (split is None or w["split"] == split) and w["references"][reference]["lift"] is not None
            ]
            result[reference] = mean_ci(lifts)
        return result

    by_split = {split: pooled(split) for split in ("dev", "held_out") if any(w["split"] == split for w in warm_starts)}
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "results")},
        "option": option,
        "minutes": (time.perf_counter() - start) / 60,
        "pooled": {r: by_split_all[option] for r, by_split_all in pooled(None).items()},
        "pooled_variants": by_split,
        "across_warm_starts": {"dev": across("dev"), "held_out": across("held_out"), "all": across(None)},
    }
    for entry in warm_starts:
        for summary in entry["references"].values():
            summary.pop("_rows")
    report["warm_starts"] = warm_starts
    results = Path(args.results) if args.results else (out / "localization.json" if args.quick else None)
    if results is None:
        results = Path(__file__).resolve().parent.parent / "docs" / "results" / "localization.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=1))
    plot(report, results.with_suffix(".png"))
    print(variant_table(report), flush=True)
    print(f"wrote {results} ({report['minutes']:.1f} min)", flush=True)
    return report


def variant_table(report: dict) -> str:
    """Lift before / on / after the first deviation (failed rollouts, pooled per split) for every option."""
    lines = [
        f"{'split':9s} {'reference':16s} {'option':24s} {'n':>3s} {'before':>7s} {'on':>7s} {'after':>7s}"
        f" {'coverage':>8s} {'on, all':>7s}"
    ]
    for split, refs in report["pooled_variants"].items():
        for reference, options in refs.items():
            for option, summary in options.items():
                cells = [summary["failed"][region]["mean"] for region in REGIONS]
                cells += [summary["coverage"], summary["lift_all_failed"]["mean"]]
                text = " ".join(f"{c:7.2f}" if c is not None else "      -" for c in cells[:3])
                text += " " + " ".join(f"{c:8.2f}" if c is not None else "       -" for c in cells[3:])
                lines.append(f"{split:9s} {reference:16s} {option:24s} {summary['failed_rollouts']:3d} {text}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
