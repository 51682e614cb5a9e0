"""Training metrics of `SGCDGRPOTrainer`: timings, scoring cost, credit statistics, validity guard, precision."""

from __future__ import annotations

import contextlib
import time

import torch

from .credit.precision import precision_from_sums, precision_sums
from .diagnostics import credit_statistics
from .sampling import GlobalRollouts
from .scoring import CreditFeatures, _loss_mask


class CreditLogger:
    """Logging of `SGCDGRPOTrainer` under `sgcd/` (a mixin: it uses the trainer's accelerator and `_metrics`)."""

    @contextlib.contextmanager
    def _timed(self, name: str):
        """Accumulates wall time per pipeline stage; logged as `sgcd/timing/<name>_s` by `_flush_timings`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] += time.perf_counter() - start

    def _flush_timings(self) -> None:
        for name, seconds in self._timings.items():
            self._log(f"timing/{name}_s", seconds)
        self._timings.clear()

    def _log(self, name: str, value: float) -> None:
        self._metrics["train"][f"sgcd/{name}"].append(float(value))

    def _gather_values(self, values: torch.Tensor) -> torch.Tensor:
        """Gathers a `(k, N_local)` float tensor of per-token values from all ranks into `(k, N_global)`."""
        values = values.float()
        padded = self.accelerator.pad_across_processes(values, dim=1, pad_index=float("nan"))
        gathered = self.accelerator.gather(padded.unsqueeze(0)).reshape(-1, values.size(0), padded.size(1))
        gathered = gathered.permute(1, 0, 2).reshape(values.size(0), -1)
        return gathered[:, ~torch.isnan(gathered[0])]

    def _log_credit_skipped(self) -> None:
        self._guard.check(
            has_references=False,
            features_all_zero=False,
            weights_inert=False,
            mask_violation=False,
            weights_require_grad=False,
        )
        self._log("weights/mean", 1.0)
        self._log("advantage_inflation", 1.0)
        self._log("segments/count", 0)

    def _log_scoring(self, scores: CreditFeatures) -> None:
        values = torch.tensor(
            [scores.time_s, scores.teacher_tokens, scores.student_tokens], device=self.accelerator.device
        )
        totals = self.accelerator.gather(values.unsqueeze(0)).sum(0)
        self._log("scoring/time_s", totals[0].item() / self.accelerator.num_processes)
        self._log("scoring/teacher_tokens", totals[1].item())
        self._log("scoring/student_tokens", totals[2].item())

    def _log_credit(self, output, *, weights, raw, d, h, credit_mask, spans, any_reference: bool) -> None:
        """Credit statistics of a batch: weights and raw weights `1 + γ·s`, divergence `d`, entropy `h` on the credit
        tokens, the segmenter's `spans`, advantage inflation, and the validity guard's checks."""
        loss_mask = _loss_mask(output)
        token_adv = output["advantages"]
        if token_adv.dim() == 1:
            token_adv = token_adv.unsqueeze(1).expand_as(weights)
        seq_adv = token_adv if self.args.credit_spec.weights is None else token_adv / weights
        values = torch.stack([weights, seq_adv, raw, d, h])[:, credit_mask]
        flat = self._gather_values(values)
        stats = credit_statistics(flat[0], flat[1], flat[2], flat[3], flat[4], self.args.credit_cap)
        for key, value in stats.items():
            self._log(key, value)

        lm = loss_mask.float()
        sums = torch.stack(
            [
                (token_adv.abs() * lm).sum(),
                (seq_adv.abs() * lm).sum(),
                credit_mask.sum().float(),
                torch.tensor(float(sum(len(s) for s in spans)), device=lm.device),
                torch.tensor(float(len(spans)), device=lm.device),
                ((weights > 1) & ~loss_mask).any().float(),
            ]
        )
        totals = self.accelerator.gather(sums.unsqueeze(0)).sum(0)
        self._log("advantage_inflation", (totals[0] / totals[1].clamp(min=1e-12)).item() if totals[1] > 0 else 1.0)
        self._log("segments/count", totals[4].item())
        self._log("segments/selected_token_frac", (totals[3] / totals[2].clamp(min=1.0)).item())
        self._log("credit_tokens", totals[2].item())
        features_zero = flat.size(1) > 0 and bool((flat[3] == 0).all())
        inert = flat.size(1) == 0 or bool((flat[0] <= 1.0).all())
        guard = self._guard.check(
            has_references=any_reference,
            features_all_zero=features_zero,
            weights_inert=inert and self.args.credit_spec.weights is not None,
            mask_violation=bool(totals[5] > 0),
            weights_require_grad=weights.requires_grad,
        )
        for key, value in guard.items():
            self._log(key, value)

    def _log_precision(self, output, rollouts: GlobalRollouts, weights, credit_mask) -> None:
        """`sgcd/credit/precision`, `.../deviation_share`, `.../lift` on failed rows with an `expert_action` column."""
        rows = []
        for i in range(output["completion_ids"].size(0)):
            row = rollouts.local_start + i
            action = (rollouts.metadata[row] if rollouts.metadata else {}).get("expert_action")
            if not action or rollouts.success(row):
                continue
            length = int(output["completion_mask"][i].sum())
            ids = output["completion_ids"][i][:length].tolist()
            rows.append(
                {
                    "expert_action": action,
                    "messages": rollouts.completions[row],
                    "tokens": [self._tokenizer.decode([t]) for t in ids],
                    "weights": weights[i][:length].tolist(),
                    "credit_mask": credit_mask[i][:length].tolist(),
                }
            )
        sums = torch.tensor(precision_sums(rows), device=weights.device)
        totals = self.accelerator.gather(sums.unsqueeze(0)).sum(0).tolist()
        for key, value in precision_from_sums(totals).items():
            self._log(f"credit/{key}", value)
