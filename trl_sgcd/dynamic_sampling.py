"""Dynamic sampling: generation rounds until a batch holds only mixed groups of siblings.

`MixedGroupSampler` is mixed into `SGCDGRPOTrainer`. Each round is generated and scored by TRL, gathered across
processes, and its groups become candidates; `sampling.plan_refill` picks the groups of the batch (mixed first, then
the fewest-round fill), which are re-padded and re-sliced per rank. Resampling rounds draw new prompts from the
`train_dataset` (`RepeatSampler` layout) or, for an iterable dataset, from `prompt_stream.StreamingPromptSampler`.
"""

from __future__ import annotations

import copy
from concurrent.futures import Future
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import IterableDataset
from trl.trainer.utils import RepeatSampler

from .prompt_stream import StreamingPromptSampler
from .sampling import GlobalRollouts, pad_to_width, plan_refill


class MixedGroupSampler:
    """The dynamic-sampling loop of `SGCDGRPOTrainer` (a mixin placed before `GRPOTrainer` in the MRO)."""

    def _gather_output(self, output: dict[str, Any], local_rows: int) -> dict[str, torch.Tensor]:
        """Gathers every per-row tensor of TRL's output dict across processes, padding dim 1 to a common width."""
        gathered = {}
        for key in sorted(output):
            value = output[key]
            if key == "num_items_in_batch":
                continue
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.size(0) != local_rows:
                raise ValueError(
                    f"dynamic_sampling cannot regroup the output field {key!r}; set dynamic_sampling=False for this "
                    "setup (e.g. vision-language inputs)."
                )
            if value.dim() >= 2:
                value = self.accelerator.pad_across_processes(
                    value, dim=1, pad_index=self._pad_value(key), pad_first=key.startswith("prompt")
                )
            gathered[key] = self.accelerator.gather(value)
        return gathered

    def _pad_value(self, key: str) -> float:
        if key in ("prompt_ids", "completion_ids"):
            return self._tokenizer.pad_token_id
        return 1 if key == "tool_mask" else 0

    def _next_local_batch(self, local_rows: int) -> list[dict[str, Any]]:
        """Draws new prompts for a resampling round, laid out like TRL's `RepeatSampler` (groups of `n` rows)."""
        world = self.accelerator.num_processes
        global_rows = local_rows * world
        if isinstance(self.train_dataset, IterableDataset):
            return self._next_stream_batch(local_rows, global_rows)
        indices: list[int] = []
        while len(indices) < global_rows:
            if self._aux_sampler_iter is None:
                sampler = RepeatSampler(
                    data_source=self.train_dataset,
                    mini_repeat_count=self.num_generations,
                    batch_size=global_rows // self.num_generations,
                    repeat_count=1,
                    shuffle=self.shuffle_dataset,
                    seed=self.args.seed + 1 + self._aux_epoch,
                )
                self._aux_sampler_iter = iter(sampler)
            try:
                indices.append(next(self._aux_sampler_iter))
            except StopIteration:
                self._aux_sampler_iter = None
                self._aux_epoch += 1
        rank = self.accelerator.process_index
        return [self.train_dataset[i] for i in indices[rank * local_rows : (rank + 1) * local_rows]]

    def _next_stream_batch(self, local_rows: int, global_rows: int) -> list[dict[str, Any]]:
        """`_next_local_batch` for an iterable `train_dataset`: the main process draws the round's prompts from a
        bounded buffer over the stream (`StreamingPromptSampler`) and broadcasts them, so every rank holds its slice of
        the same groups of `num_generations` copies."""
        if self._prompt_stream is None:
            self._prompt_stream = StreamingPromptSampler(
                self.train_dataset,
                self.args.resample_buffer_size,
                seed=self.args.seed + 1,
                shuffle=self.shuffle_dataset,
            )
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            payload = [self._prompt_stream.draw(global_rows // self.num_generations)]
        broadcast_object_list(payload, from_process=0)
        rows = [copy.deepcopy(record) for record in payload[0] for _ in range(self.num_generations)]
        rank = self.accelerator.process_index
        return rows[rank * local_rows : (rank + 1) * local_rows]

    def _sample_mixed_groups(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], GlobalRollouts]:
        """Dynamic sampling: generate rounds until the batch holds only mixed groups, or the round budget is spent."""
        local_rows = len(inputs)
        world = self.accelerator.num_processes
        n = self.num_generations
        target_groups = local_rows * world // n
        rounds: list[tuple[dict[str, torch.Tensor], GlobalRollouts]] = []
        candidates: list[tuple[int, int, bool]] = []
        batch = inputs
        prefetched: dict[tuple[int, int], tuple[Future, int]] = {}
        futures: list[Future] = []
        for round_index in range(self.args.max_resample_rounds + 1):
            with self._timed("generation"):
                output = super()._generate_and_score_completions(batch)
            rollouts = self._gather_rollouts()
            if self.args.prefetch_references and self.args.credit_spec.scores and self.accelerator.is_main_process:
                # Start this round's provider calls now: they overlap with the next rounds' generation.
                mixed = rollouts.mixed_groups()
                if mixed:
                    future = self._provider_pool().submit(self._resolve, [rollouts.sibling_group(g) for g in mixed])
                    futures.append(future)
                    prefetched.update({(round_index, g): (future, i) for i, g in enumerate(mixed)})
            rounds.append((self._gather_output(output, local_rows), rollouts))
            candidates.extend((round_index, g, rollouts.is_mixed(g)) for g in range(rollouts.num_groups))
            if sum(mixed for _, _, mixed in candidates) >= target_groups:
                break
            if round_index < self.args.max_resample_rounds:
                batch = self._next_local_batch(local_rows)
        chosen, filled = plan_refill(candidates, target_groups)
        if futures:
            self._prefetched = ({j: prefetched[key] for j, key in enumerate(chosen) if key in prefetched}, futures)

        # Assemble the chosen groups into one global batch, re-padding each field to a common width.
        device = self.accelerator.device
        fields: dict[str, torch.Tensor] = {}
        for key in rounds[0][0]:
            width = max(r[0][key].size(1) for r in rounds) if rounds[0][0][key].dim() >= 2 else None
            parts = []
            for round_index, group in chosen:
                tensor = rounds[round_index][0][key]
                if width is not None:
                    tensor = pad_to_width(tensor, width, self._pad_value(key), left=key.startswith("prompt"))
                parts.append(tensor[group * n : (group + 1) * n])
            fields[key] = torch.cat(parts, dim=0)
        selected = GlobalRollouts.concat([rounds[r][1].select(list(rounds[r][1].group_rows(g))) for r, g in chosen])
        rank = self.accelerator.process_index
        selected.local_start, selected.local_end = rank * local_rows, (rank + 1) * local_rows
        loss_mask = fields["completion_mask"] * fields.get("tool_mask", torch.ones_like(fields["completion_mask"]))
        output = {k: v[selected.local_start : selected.local_end].to(device) for k, v in fields.items()}
        output["num_items_in_batch"] = loss_mask.sum().to(device)

        sampled = len(candidates)
        n_mixed = sum(mixed for _, _, mixed in candidates)
        self._log("sampling/rounds", len(rounds))
        self._log("sampling/sampled_groups", sampled)
        self._log("sampling/mixed_yield", n_mixed / max(1, sampled))
        self._log("sampling/filled_groups", filled)
        self._totals["filled_groups"] += filled
        self._log("sampling/filled_groups_total", self._totals["filled_groups"])
        return output, selected
