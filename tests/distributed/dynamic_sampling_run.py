"""Run under `accelerate launch --cpu --num_processes 2`: dynamic sampling with groups that straddle processes.

Writes one JSON report per rank into the output directory given as argv[2]; `tests/test_distributed.py` checks them.
"""

import json
import os
import sys

import torch
from accelerate.utils import gather_object
from datasets import Dataset

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer


torch.set_num_threads(1)


def parity_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def main(model_path: str, out_dir: str) -> None:
    calls_path = os.path.join(out_dir, "provider_calls.txt")

    def provider(group):
        with open(calls_path, "a") as f:
            f.write(f"{os.getpid()}\t{group.task_text}\n")
        return "State checks: answer with an even number of characters."

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"task {i}"}]} for i in range(30)])
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

    trainer._apply_credit = spy
    trainer.train()
    rank = trainer.accelerator.process_index
    checksum = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    report = {
        "rank": rank,
        "pid": os.getpid(),
        "is_main": trainer.accelerator.is_main_process,
        "world": trainer.accelerator.num_processes,
        "seen": seen,
        "checksum": checksum,
        "logs": [h for h in trainer.state.log_history if "sgcd/provider/calls" in h],
        "all_checksums": gather_object([checksum]),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
