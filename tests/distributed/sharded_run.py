"""Run under `accelerate launch --config_file <FSDP or ZeRO-3 CPU config>`: two SGCD steps with credit on.

Writes one JSON report per rank into argv[2]; `tests/test_distributed.py` checks them.
"""

import json
import os
import sys

import torch
from datasets import Dataset

from trl_sgcd import SGCDConfig, SGCDGRPOTrainer


torch.set_num_threads(1)


def parity_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def main(model_path: str, out_dir: str) -> None:
    rows = [{"prompt": [{"role": "user", "content": f"task {i}"}]} for i in range(16)]
    args = SGCDConfig(
        output_dir=os.path.join(out_dir, "run"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        max_steps=2,
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
        model=model_path,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        credit_reference=lambda group: "State checks: answer with an even number of characters.",
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    report = {
        "world": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "fsdp": trainer.is_fsdp_enabled,
        "deepspeed": trainer.is_deepspeed_enabled,
        "wrapped": type(trainer.model_wrapped).__name__,
        "partitioned": all(hasattr(p, "ds_id") for p in trainer.model.parameters()),  # ZeRO-3 parameters
        "global_step": trainer.state.global_step,
        "logs": [h for h in trainer.state.log_history if "sgcd/weights/mean" in h],
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
