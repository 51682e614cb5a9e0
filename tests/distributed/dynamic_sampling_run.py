"""Run under `accelerate launch --cpu --num_processes 2`: dynamic sampling with groups that straddle processes.

Writes one JSON report per rank into the output directory given as argv[2]; `tests/test_distributed.py` checks them.
With argv[3] == "iterable" the train_dataset is a stream (`datasets.IterableDataset`).
"""

import json
import os
import sys

import torch
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer


torch.set_num_threads(1)


def parity_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def main(model_path: str, out_dir: str, kind: str = "map") -> None:
    calls_path = os.path.join(out_dir, "provider_calls.txt")

    def provider(group):
        with open(calls_path, "a") as f:
            f.write(f"{os.getpid()}\t{group.task_text}\n")
        return "State checks: answer with an even number of characters."

    rows = [{"prompt": [{"role": "user", "content": f"task {i}"}]} for i in range(30)]
    dataset = Dataset.from_list(rows) if kind == "map" else IterableDataset.from_generator(lambda: iter(rows))
    args = SGCDConfig(
        output_dir=os.path.join(out_dir, "run"),
        per_device_train_batch_size=3,  # 2 ranks x 3 rows = 3 groups of 2: the middle group straddles the ranks
        num_generations=2,
        max_completion_length=12,
        max_steps=3,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        divergence_top_k=16,
        segment_min_divergence=0.0,
        max_resample_rounds=3,
        seed=3,
    )
    trainer = SGCDGRPOTrainer(
        model=model_path, reward_funcs=parity_reward, args=args, train_dataset=dataset, credit_reference=provider
    )
    seen = []
    original = trainer._apply_credit

    def spy(output, rollouts):
        local = [(p[0]["content"], r) for p, r in zip(rollouts.prompts, rollouts.rewards, strict=True)]
        seen.append(
            {
                "global_groups": local,
                "mixed": rollouts.mixed_groups(),
                "local": [rollouts.local_start, rollouts.local_end],
                "num_items_in_batch": float(output["num_items_in_batch"]),
                "local_rows": int(output["completion_ids"].size(0)),
            }
        )
        return original(output, rollouts)

    rounds = []
    original_next = trainer._next_local_batch

    def spy_next(local_rows):
        batch = original_next(local_rows)
        rounds.append(gather_object([row["prompt"][0]["content"] for row in batch]))
        return batch

    trainer._apply_credit, trainer._next_local_batch = spy, spy_next
    trainer.train()
    rank = trainer.accelerator.process_index
    checksum = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    report = {
        "rank": rank,
        "pid": os.getpid(),
        "is_main": trainer.accelerator.is_main_process,
        "world": trainer.accelerator.num_processes,
        "seen": seen,
        "resampled": rounds,
        "checksum": checksum,
        "logs": [h for h in trainer.state.log_history if "sgcd/provider/calls" in h],
        "all_checksums": gather_object([checksum]),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
