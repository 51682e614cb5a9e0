"""How the SGCD/GRPO step-time and memory ratios move with model size and completion length.

    python benchmarks/overhead_sweep.py                      # writes outputs/overhead_sweep/{sweep.json,sweep.png}
    python benchmarks/overhead_sweep.py --steps 6 --warmup 2 # a faster, noisier sweep
    python benchmarks/overhead_sweep.py --student-pass separate --out outputs/overhead_sweep_separate

Runs `benchmarks/overhead.py` once per configuration (a fresh process per configuration, both arms alternating step
by step inside it, as that script does) and plots both ratios against the configuration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


CONFIGS = [  # (label, extra overhead.py flags)
    ("h64 L2 T128", ["--hidden-size", "64", "--num-layers", "2", "--completion-length", "128"]),
    ("h64 L2 T256", ["--hidden-size", "64", "--num-layers", "2", "--completion-length", "256"]),
    ("h256 L4 T128", ["--hidden-size", "256", "--num-layers", "4", "--completion-length", "128"]),
    ("h256 L4 T256", ["--hidden-size", "256", "--num-layers", "4", "--completion-length", "256"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/overhead_sweep")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--student-pass", choices=["auto", "fused", "separate"], default="auto")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("overhead.py")
    rows = []
    for label, flags in CONFIGS:
        path = out / f"{label.replace(' ', '_')}.json"
        cmd = [sys.executable, str(script), *flags, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--student-pass", args.student_pass]  # fmt: skip
        result = subprocess.run([*cmd, "--out-json", str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.exit(f"{label} failed:\n{result.stderr[-3000:]}")
        data = json.loads(path.read_text())
        rows.append({"config": label, **{k: data[k] for k in ("step_time_ratio", "peak_memory_ratio")}})
        print(f"{label:14s} step_time_ratio={rows[-1]['step_time_ratio']:.3f} "
              f"peak_memory_ratio={rows[-1]['peak_memory_ratio']:.3f}", flush=True)  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(rows))
    ax.plot(x, [r["step_time_ratio"] for r in rows], "o-", label="step time SGCD / GRPO")
    ax.plot(x, [r["peak_memory_ratio"] for r in rows], "s-", label="peak memory SGCD / GRPO")
    ax.axhline(1.15, color="grey", ls=":", lw=1)
    ax.axhline(1.10, color="grey", ls="--", lw=1)
    ax.set_xticks(list(x), [r["config"] for r in rows])
    ax.set_ylabel("ratio")
    ax.set_title("SGCD overhead vs model size (h: hidden, L: layers) and completion length T")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    print(f"wrote {out / 'sweep.png'}")


if __name__ == "__main__":
    main()
