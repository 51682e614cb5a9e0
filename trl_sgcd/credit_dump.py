"""Credit dumps: the one writer and the readers of `output_dir/sgcd_credit/step_XXXXXX_rankR.jsonl`.

With `SGCDConfig(credit_log_steps=N)` the trainer writes one JSON line per rollout every `N` steps (`write_batch`);
`trl-sgcd visualize`, the benchmarks and the tests read them back through `load_step` / `iter_records`. Each record
holds `step`, `row`, `group`, `reward`, `success`, `advantage`, `sequence_advantage`, `metadata` (without the answer
literals), `messages`, `tokens`, `weights`, `assistant_mask`, `credit_mask` and `reference`; when the trainer
passes its credit features, also the per-token `divergence` (unsigned, before any segmenter option), `entropy` (the
teacher's) and, where scored, `log_ratio` (`log q_teacher(y_t) - log p_student(y_t)`), so the segmenter can be
re-run on the same rollouts offline.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .references.sanitizer import Sanitizer, mask_credit_record
from .sampling import GlobalRollouts
from .siblings import CreditReference


Record = dict[str, Any]
DUMP_DIR = "sgcd_credit"
_DUMP_NAME = re.compile(r"step_(\d+)_rank(\d+)\.jsonl$")


def dump_path(output_dir: str, step: int, rank: int) -> str:
    """The dump file of one step and rank under a training `output_dir`."""
    return os.path.join(output_dir, DUMP_DIR, f"step_{step:06d}_rank{rank}.jsonl")


def write_batch(
    path: str,
    *,
    step: int,
    rollouts: GlobalRollouts,
    output: dict[str, Any],
    loss_mask: torch.Tensor,
    local_refs: list[CreditReference | None],
    weights: torch.Tensor,
    credit_mask: torch.Tensor,
    sequence_advantages: torch.Tensor,
    decode: Any,
    raw: bool = False,
    features: Any = None,
) -> None:
    """Writes the credit of this process's rows of a batch to `path` (one JSON line per rollout).

    `decode` turns one token id list into text (the tokenizer's `decode`); `output` is TRL's batch dict, whose
    `advantages` are the credit-weighted ones. Records are masked by the sanitizer (`mask_credit_record`: messages,
    metadata, reference and tokens) unless `raw` (`SGCDConfig.credit_dump_raw`). `features` (the scorer's
    `CreditFeatures`) adds the per-token `divergence`, `entropy` and, when set, `log_ratio`.
    """
    sanitizer = None if raw else Sanitizer()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    advantages = output["advantages"]
    per_token = {}
    if features is not None and features.divergence is not None:
        per_token = {"divergence": features.divergence, "entropy": features.entropy}
        if features.teacher_logps is not None:
            per_token["log_ratio"] = features.log_ratio
    with open(path, "w") as f:
        for i in range(output["completion_ids"].size(0)):
            row = rollouts.local_start + i
            length = int(output["completion_mask"][i].sum())
            ids = output["completion_ids"][i][:length].tolist()
            adv = advantages[i] if advantages.dim() == 1 else advantages[i][loss_mask[i]].mean()
            record = {
                "step": step,
                "row": row,
                "group": rollouts.group_of(row),
                "reward": rollouts.rewards[row],
                "success": rollouts.success(row),
                "advantage": float(adv) if adv.numel() else 0.0,
                "sequence_advantage": float(sequence_advantages[i]),
                # Answer literals stay out of the dump: they are exactly what the sanitizer keeps from providers.
                "metadata": {
                    k: v
                    for k, v in (rollouts.metadata[row] if rollouts.metadata else {}).items()
                    if k != "answer_literals"
                },
                "messages": rollouts.completions[row],
                "tokens": [decode([t]) for t in ids],
                "weights": weights[i][:length].tolist(),
                "assistant_mask": loss_mask[i][:length].int().tolist(),
                "credit_mask": credit_mask[i][:length].int().tolist(),
                "reference": local_refs[i].text if local_refs[i] is not None else None,
                **{name: value[i][:length].tolist() for name, value in per_token.items()},
            }
            if sanitizer is not None:
                record = mask_credit_record(record, sanitizer)
            f.write(json.dumps(record, default=str) + "\n")


def _scan(path: str | Path) -> dict[int, list[Path]]:
    path = Path(path)
    if path.is_file():
        match = _DUMP_NAME.search(path.name)
        return {int(match.group(1)) if match else 0: [path]}
    directory = path / DUMP_DIR if (path / DUMP_DIR).is_dir() else path
    steps: dict[int, list[Path]] = {}
    for file in sorted(directory.glob("step_*_rank*.jsonl")):
        match = _DUMP_NAME.search(file.name)
        if match:
            steps.setdefault(int(match.group(1)), []).append(file)
    return steps


def dump_files(path: str | Path) -> dict[int, list[Path]]:
    """The dump files under `path` (an output directory, its `sgcd_credit/`, or one file), by step; raises if none."""
    steps = _scan(path)
    if not steps:
        raise FileNotFoundError(
            f"No credit dump under {path}: expected sgcd_credit/step_XXXXXX_rankR.jsonl files "
            "(train with SGCDConfig(credit_log_steps=N))."
        )
    return steps


def available_steps(path: str | Path) -> list[int]:
    """The steps that have a credit dump under `path` (an output directory, its `sgcd_credit/`, or a JSONL file)."""
    return sorted(dump_files(path))


def read_file(path: str | Path) -> list[Record]:
    """The records of one dump file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def id_order(value: Any) -> tuple[int, int, str]:
    """Sort key of a row or group id: integers in order, then anything else (a hand-edited dump) as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def row_order(record: Record) -> tuple[int, int, str]:
    """Sort key of a record by its global row (`id_order`)."""
    return id_order(record.get("row") if isinstance(record, dict) else None)


def load_step(path: str | Path, step: int | None = None) -> list[Record]:
    """Reads the credit records of one step, merged over ranks and sorted by global row.

    Args:
        path: a training `output_dir`, its `sgcd_credit/` folder, or one dump file.
        step: the step to read; defaults to the latest one available.
    """
    steps = dump_files(path)
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ValueError(f"No credit dump for step {step} under {path}; available steps: {sorted(steps)}.")
    records = [record for file in steps[step] for record in read_file(file)]
    return sorted(records, key=row_order)


def iter_records(path: str | Path) -> Iterator[Record]:
    """Every record under `path`, step by step (nothing if there is no dump)."""
    for _, files in sorted(_scan(path).items()):
        for file in files:
            yield from read_file(file)
