"""Credit scoring: the teacher and student passes over a batch's rollouts.

`CreditScorer` is mixed into `SGCDGRPOTrainer`. It scores each unit of siblings that share a prompt once with the
teacher prompt (reference inserted) and once with the student prompt, sharing the prefix's cache across the unit's rows
(`prefix_cache.repeat_prefix_cache`), streams the LM head over `credit_token_chunk` positions at a time, and, with the
student pass fused into TRL's loss forward, forms the student side from the captured hidden states (`_fused_credit`).
`_score` returns the batch's features as one typed `CreditFeatures`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

import torch

from .credit import (
    observed_anchored_divergence,
    student_support_divergence,
    support_entropy,
    teacher_divergence,
    teacher_topk,
)
from .diagnostics import logger
from .prefix_cache import continuation_positions, prefix_sharing_error, repeat_prefix_cache
from .sampling import GlobalRollouts
from .siblings import CreditReference
from .teacher_context import insert_reference


_DENSE_HEAD_FACTOR = 64  # fused student side: project the full head when V <= this x (K + 1), else gather rows


@dataclass
class CreditFeatures:
    """The credit features of a batch's local rows, as returned by `CreditScorer._score`.

    Every tensor is `(B, T, ...)` over the batch's completion positions and holds values only at the assistant tokens
    (`completion_mask * tool_mask`) of rows whose group has a teacher context; it is zero elsewhere. Which optional
    fields are set depends on the pass and the mode (`CreditModeSpec`), and is decided in `CreditFeatures.empty`:

    Args:
        entropy: teacher entropy on the support `top-K ∪ observed ∪ tail`, `(B, T)`; always set.
        divergence: `KL(p_student ‖ sg[q_teacher])` on the support, `(B, T)`; `None` when the student side is fused
            into TRL's loss forward (it is formed there from `support_ids`, `teacher_q`).
        teacher_logps, student_logps: log-probabilities of the observed token under each pass, `(B, T)`; set with
            `observed_logps` (`sdpo`) or `segment_signed`.
        support_ids, teacher_q: fused student side only: the teacher's support ids `(B, T, K + 1)` and its probabilities
            on them plus the tail bucket `(B, T, K + 2)`.
        sd_ids, sd_q, sd_keep: `aux_sd_loss` (`direct_sd`) only: the teacher's support ids `(B, T, K + 1)`, probabilities
            `(B, T, K + 2)` and which support entries are kept `(B, T, K + 1)`, for the auxiliary distillation loss.
        time_s: wall time of the scoring passes on this rank.
        teacher_tokens, student_tokens: tokens each pass processed on this rank (`student_tokens` is 0 when fused).
    """

    entropy: torch.Tensor
    divergence: torch.Tensor | None = None
    teacher_logps: torch.Tensor | None = None
    student_logps: torch.Tensor | None = None
    support_ids: torch.Tensor | None = None
    teacher_q: torch.Tensor | None = None
    sd_ids: torch.Tensor | None = None
    sd_q: torch.Tensor | None = None
    sd_keep: torch.Tensor | None = None
    time_s: float = 0.0
    teacher_tokens: int = 0
    student_tokens: int = 0

    @classmethod
    def empty(
        cls, batch: int, width: int, top_k: int, device, *, fused: bool, observed_logps: bool, sd_support: bool
    ) -> CreditFeatures:
        """Zero features for `batch` rows of `width` positions: the one place that decides which fields are set."""

        def zeros(*shape, dtype=torch.float32):
            return torch.zeros(batch, width, *shape, dtype=dtype, device=device)

        features = cls(entropy=zeros())
        if fused:
            features.support_ids, features.teacher_q = zeros(top_k + 1, dtype=torch.long), zeros(top_k + 2)
            return features
        features.divergence = zeros()
        if observed_logps:
            features.teacher_logps, features.student_logps = zeros(), zeros()
        if sd_support:
            features.sd_ids, features.sd_q = zeros(top_k + 1, dtype=torch.long), zeros(top_k + 2)
            features.sd_keep = zeros(top_k + 1, dtype=torch.bool)
        return features

    @property
    def fused(self) -> bool:
        """Only the teacher side was scored; the student side comes with TRL's loss forward (`_fused_credit`)."""
        return self.support_ids is not None

    @property
    def log_ratio(self) -> torch.Tensor:
        """`log π_teacher(y_t) − log π_student(y_t)` of the observed token (needs `observed_logps`)."""
        if self.teacher_logps is None or self.student_logps is None:
            raise ValueError("these features hold no observed-token log-probabilities")
        return self.teacher_logps - self.student_logps

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-token fields that are set, by name."""
        return {f.name: value for f in fields(self) if isinstance(value := getattr(self, f.name), torch.Tensor)}


class CreditScorer:
    """Teacher/student scoring passes of `SGCDGRPOTrainer` (a mixin: it uses the trainer's model, args, accelerator)."""

    def _reference_block(self, reference: CreditReference) -> str:
        """The reference wrapped for the teacher prompt, truncated to `max_reference_tokens` policy tokens."""
        text = reference.text
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.args.max_reference_tokens:
            text = self._tokenizer.decode(ids[: self.args.max_reference_tokens]) + " …"
        return self.args.reference_template.format(reference=text)

    @contextlib.contextmanager
    def _scoring_mode(self):
        """No gradients, no dropout, no gradient checkpointing: scoring must be deterministic and cheap.

        Checkpointed layers run plainly in eval mode without gradients, so checkpointing is not toggled (re-enabling it
        would register another input-gradient hook each step).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _completion_logits(self, model, input_ids, attention_mask, num_completion_tokens):
        """Logits predicting each completion token: positions `P-1 … P+T-2` of `prompt + completion`."""
        with self.accelerator.autocast():
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                logits_to_keep=num_completion_tokens + 1,
                use_cache=False,
            )
        return out.logits[:, :-1, :]

    def _scoring_units(self, rollouts: GlobalRollouts, contexts) -> list[tuple[int, list[int]]]:
        """Rows to score, grouped into units that share one prompt: `(rank, global rows)`, in a global order.

        Siblings of a group normally share their prompt, hence also their teacher prompt, so each unit scores its
        prefix once and its completions against the cached prefix. Computed from gathered data, so every rank knows
        every rank's units (and forward count) without communicating.
        """
        local_rows = rollouts.local_end - rollouts.local_start
        units: dict[tuple[int, int, str], list[int]] = {}
        for row in range(len(rollouts)):
            group = rollouts.group_of(row)
            if contexts[group] is None:
                continue
            key = (row // local_rows, group, json.dumps(rollouts.prompts[row], sort_keys=True, default=str))
            units.setdefault(key, []).append(row)
        return [(key[0], rows) for key, rows in units.items()]

    def _forward(self, **kwargs):
        """One scoring forward: `(per-position outputs, KV cache)`.

        The outputs are final hidden states when the LM head can be applied separately (`_head`), so the `(B, T, V)`
        logits are only ever materialised for `credit_token_chunk` positions at a time; otherwise they are logits.
        """
        with self.accelerator.autocast():
            if self._stream_head:
                out = self.model(**kwargs, output_hidden_states=True, logits_to_keep=1)
                return out.hidden_states[-1], out.past_key_values
            out = self.model(**kwargs)
        return out.logits, out.past_key_values

    def _token_chunk(self) -> int:
        """Positions per chunk of logits (`credit_token_chunk`, or about 4M logits and at least 64 positions)."""
        if self.args.credit_token_chunk is not None:
            return self.args.credit_token_chunk
        return max(64, 2**22 // self.model.config.get_text_config().vocab_size)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of a chunk of positions from `_forward` outputs."""
        if not self._stream_head:
            return features
        with self.accelerator.autocast():
            return self._lm_head(features)

    def _check_stream_head(self) -> None:
        """Streams the LM head only where `lm_head(hidden_states[-1])` reproduces the model's logits exactly."""
        self._stream_head = False
        unwrapped = self.accelerator.unwrap_model(self.model)
        text_config = unwrapped.config.get_text_config()
        head = unwrapped.get_output_embeddings()
        scaled = any(
            getattr(text_config, name, None) not in (None, 1.0)
            for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "logits_scaling")
        )
        if head is None or scaled:
            return
        probe = torch.tensor([[self._tokenizer.pad_token_id] * 2], device=self.accelerator.device)
        with self.accelerator.autocast():
            out = self.model(input_ids=probe, output_hidden_states=True, use_cache=False)
            streamed = head(out.hidden_states[-1])
        self._lm_head = head
        self._stream_head = torch.allclose(streamed.float(), out.logits.float(), rtol=1e-4, atol=1e-4)

    def _shares_prefix(self) -> bool:
        """`credit_shared_prefix`, unless the model's cache proved not to continue exactly (`_check_prefix_sharing`)."""
        return self.args.credit_shared_prefix and self._share_prefix is not False

    def _check_prefix_sharing(self) -> None:
        """Probes once whether a repeated prefix cache reproduces unshared scoring; falls back with one warning if not."""
        config = self.model.config.get_text_config()

        def forward(**kwargs):
            out = self.model(**kwargs)
            return out.logits, out.past_key_values

        exact = self.accelerator.mixed_precision == "no" and self.model.dtype == torch.float32
        reason = prefix_sharing_error(
            forward, config.vocab_size, self.accelerator.device, config.model_type, rtol=1e-5 if exact else 2e-2
        )
        self._share_prefix = reason is None
        if reason is not None:
            logger.warning(f"Shared-prefix scoring is off for this model ({reason}); each row is scored in full.")

    def _prefix_features(self, prefix_ids, completion_ids, completion_mask, rows, cache=None):
        """Per-position outputs predicting each completion token of `rows`, which share the prefix `prefix_ids`.

        With `credit_shared_prefix`, the prefix runs once per unit (pass the returned `cache` back in for the unit's
        next chunk of rows) and its KV cache is repeated for the rows: a unit of `n` siblings costs `P + n·T` tokens
        instead of `n·(P + T)`. Otherwise each row is scored in full.

        Returns `(features (k, T, ·), tokens processed, cache)`; turn features into logits with `_head`.
        """
        device = self.accelerator.device
        comp, comp_mask = completion_ids[rows], completion_mask[rows]
        prefix = prefix_ids.unsqueeze(0).to(device)
        width = comp.size(1)
        if not self._shares_prefix():
            ids = torch.cat([prefix.expand(len(rows), -1), comp], 1)
            mask = torch.cat([torch.ones_like(prefix).expand(len(rows), -1), comp_mask], 1)
            features, _ = self._forward(input_ids=ids, attention_mask=mask, use_cache=False)
            return features[:, -width - 1 : -1, :], ids.numel(), None
        tokens = comp.numel()
        if cache is None:
            features, past = self._forward(input_ids=prefix, use_cache=True)
            cache = (past, features[:, -1:, :])
            tokens += prefix.size(1)
        past = copy.deepcopy(cache[0])  # the forward below appends to the cache in place
        repeat_prefix_cache(past, len(rows))
        mask = torch.cat([torch.ones(len(rows), prefix.size(1), dtype=comp_mask.dtype, device=device), comp_mask], 1)
        features, _ = self._forward(
            input_ids=comp,
            attention_mask=mask,
            past_key_values=past,
            position_ids=continuation_positions(prefix.size(1), comp),
            use_cache=True,
        )
        features = torch.cat([cache[1].expand(len(rows), 1, -1), features[:, :-1, :]], dim=1)
        return features, tokens, cache

    def _score(
        self, output, rollouts, local_refs, contexts, fused: bool = False, observed_logps: bool = False
    ) -> CreditFeatures:
        """Teacher and student scoring passes over the local rows that have a teacher context.

        Rows are scored per unit of siblings sharing a prompt (see `_scoring_units`). Every rank runs the same number
        of forwards, padding with one-token forwards when it has less to score, so sharded models (ZeRO-3, FSDP) see
        matched collectives. With `fused` (and a streamable LM head) only the teacher pass runs, and the features hold
        the teacher's top-K support for `_fused_credit` instead of the divergence (`CreditFeatures.fused`). With
        `observed_logps` (a credit dump) the observed tokens' log-probabilities are kept too.
        """
        spec = self.args.credit_spec
        device = self.accelerator.device
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        loss_mask = _loss_mask(output)
        batch, width = completion_ids.shape
        chunk = self.args.credit_batch_size or self.args.per_device_train_batch_size
        start, rank = rollouts.local_start, self.accelerator.process_index
        units = self._scoring_units(rollouts, contexts)
        # Each unit costs, per pass, one prefix forward (shared-prefix mode) plus one forward per chunk of rows.
        if self._share_prefix is None and self.args.credit_shared_prefix:
            with self._scoring_mode():
                self._check_prefix_sharing()
        per_unit = [(r, (1 if self._shares_prefix() else 0) + math.ceil(len(rows) / chunk)) for r, rows in units]
        target = max(sum(n for r, n in per_unit if r == k) for k in range(self.accelerator.num_processes))
        local_units = [[row - start for row in rows] for r, rows in units if r == rank]

        teacher_prompts = [
            insert_reference(
                rollouts.prompts[start + rows[0]],
                self._reference_block(local_refs[rows[0]]),
                self.args.reference_position,
            )
            for rows in local_units
        ]
        teacher_ids: list[list[int]] = []
        if teacher_prompts:
            saved_envs = getattr(self, "_batch_environments", None)
            if rollouts.environments is not None:
                self._batch_environments = [rollouts.environments[start + rows[0]] for rows in local_units]
            try:
                teacher_ids = list(self._tokenize_prompts(teacher_prompts)[0])
            finally:
                if rollouts.environments is not None:
                    self._batch_environments = saved_envs

        t0 = time.perf_counter()
        teacher_tokens = student_tokens = forwards = 0
        with self._scoring_mode():
            if self._stream_head is None:
                self._check_stream_head()
            fused = fused and self._stream_head
            vocab = self._lm_head.weight.size(0) if fused else self.model.config.get_text_config().vocab_size
            result = CreditFeatures.empty(
                batch,
                width,
                min(self.args.divergence_top_k, vocab),
                device,
                fused=fused,
                observed_logps=spec.observed_logps or self.args.segment_signed or observed_logps,
                sd_support=spec.aux_sd_loss,
            )
            passes = 1 if result.fused else 2
            for unit, t_ids in zip(local_units, teacher_ids, strict=True):
                student_prefix = prompt_ids[unit[0]][prompt_mask[unit[0]].bool()]
                teacher_prefix = torch.as_tensor(t_ids, dtype=torch.long)
                teacher_cache = student_cache = None
                for c in range(0, len(unit), chunk):
                    idx = unit[c : c + chunk]
                    with self._timed("teacher_pass"):
                        teacher_features, n_t, teacher_cache = self._prefix_features(
                            teacher_prefix, completion_ids, completion_mask, idx, teacher_cache
                        )
                    student_features, n_s = None, 0
                    if passes == 2:
                        with self._timed("student_pass"):
                            student_features, n_s, student_cache = self._prefix_features(
                                student_prefix, completion_ids, completion_mask, idx, student_cache
                            )
                    teacher_tokens += n_t
                    student_tokens += n_s
                    with self._timed("credit_math"):
                        self._accumulate_features(
                            result, idx, teacher_features, student_features, completion_ids, loss_mask
                        )
                forwards += (1 if self._shares_prefix() else 0) + math.ceil(len(unit) / chunk)
            pad = torch.full((1, 1), self._tokenizer.pad_token_id, dtype=torch.long, device=device)
            for _ in range(target - forwards):  # keep collectives matched across ranks
                for _pass in range(passes):
                    self._forward(input_ids=pad, use_cache=False)
        result.time_s = time.perf_counter() - t0
        result.teacher_tokens, result.student_tokens = teacher_tokens, student_tokens
        return result

    def _accumulate_features(
        self, result: CreditFeatures, idx, teacher_features, student_features, completion_ids, loss_mask
    ) -> None:
        """Writes the credit features of rows `idx` into `result` (only at their assistant tokens).

        Logits are formed `credit_token_chunk` positions at a time, so neither pass's `(B, T, V)` distribution is ever
        held in full (float32 or otherwise) when the LM head is streamed. Without `student_features` (fused student
        pass) only the teacher's entropy and top-K support are kept.
        """
        rows = torch.tensor(idx, device=completion_ids.device)
        sel = loss_mask[rows]
        observed = completion_ids[rows][sel]
        teacher_sel = teacher_features[sel]
        student_sel = None if student_features is None else student_features[sel]
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        chunk = self._token_chunk()
        for start in range(0, observed.numel(), chunk):
            obs = observed[start : start + chunk]
            teacher_logits = self._head(teacher_sel[start : start + chunk])
            if student_features is None:
                ids_k, q_k, _ = teacher_topk(teacher_logits, obs, self.args.divergence_top_k, self.temperature)
                parts["support_ids"].append(ids_k)
                parts["teacher_q"].append(q_k)
                parts["entropy"].append(support_entropy(q_k))
                continue
            student_logits = self._head(student_sel[start : start + chunk])
            dd, hh = teacher_divergence(
                student_logits,
                teacher_logits,
                obs,
                top_k=self.args.divergence_top_k,
                divergence=self.args.divergence,
                temperature=self.temperature,
                chunk_size=chunk,
            )
            parts["divergence"].append(dd)
            parts["entropy"].append(hh)
            if result.teacher_logps is not None:
                for name, logits in (("teacher_logps", teacher_logits), ("student_logps", student_logits)):
                    logps = torch.log_softmax(logits.float() / self.temperature, dim=-1)
                    parts[name].append(logps.gather(-1, obs.unsqueeze(-1)).squeeze(-1))
            if result.sd_ids is not None:
                ids_k, q_k, keep_k = teacher_topk(teacher_logits, obs, self.args.divergence_top_k, self.temperature)
                parts["sd_ids"].append(ids_k)
                parts["sd_q"].append(q_k)
                parts["sd_keep"].append(keep_k)
        for name, values in parts.items():
            tensor = getattr(result, name)
            block = tensor[rows]
            block[sel] = torch.cat(values).to(block.dtype)
            tensor[rows] = block

    def _direct_sd_loss(self, model, inputs) -> torch.Tensor:
        """Uncapped top-K `KL(student || teacher)` on credit tokens, with a gradient through the student."""
        mask = inputs["sgcd_sd_mask"].bool()
        completion_ids = inputs["completion_ids"]
        logits = self._completion_logits(
            model,
            torch.cat([inputs["prompt_ids"], completion_ids], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            completion_ids.size(1),
        )
        if not mask.any():
            return logits.sum() * 0.0  # keep the graph so every rank runs the same backward
        kl = student_support_divergence(
            logits[mask],
            inputs["sgcd_sd_ids"][mask],
            inputs["sgcd_sd_q"][mask],
            inputs["sgcd_sd_keep"][mask],
            self.args.divergence,
            self.temperature,
        )
        return kl.mean()

    @torch.no_grad()
    def _fused_credit(self, inputs: dict[str, Any], hidden: torch.Tensor, observed_logps: torch.Tensor) -> None:
        """Student side of the credit from the loss forward: `K + 1` logits per credit token, anchored on TRL's
        log-probability of the observed token; then the weights, written into `inputs["advantages"]` before TRL's
        loss reads them."""
        mask = inputs["sgcd_credit_mask"].bool()
        support_ids, teacher_q = inputs["sgcd_support_ids"][mask], inputs["sgcd_teacher_q"][mask]
        states, observed = hidden[mask], observed_logps[mask]
        weight, bias = self._lm_head.weight, self._lm_head.bias
        d = torch.zeros(mask.shape, device=hidden.device)
        parts = []
        chunk = self._token_chunk()
        # Gathering K + 1 head rows per position costs ~100x more per element than a dense matmul, so small
        # vocabularies are projected in full and only large ones gathered (same values either way).
        dense = weight.size(0) <= _DENSE_HEAD_FACTOR * support_ids.size(-1)
        with self._timed("student_pass"):
            for start in range(0, support_ids.size(0), chunk):
                ids, h = support_ids[start : start + chunk], states[start : start + chunk].float()
                if dense:
                    logits = (h @ weight.T.float()).gather(-1, ids)
                else:
                    logits = torch.einsum("nkh,nh->nk", weight[ids].float(), h)
                if bias is not None:
                    logits = logits + bias[ids].float()
                parts.append(
                    observed_anchored_divergence(
                        logits,
                        observed[start : start + chunk],
                        ids,
                        teacher_q[start : start + chunk],
                        self.args.divergence,
                        self.temperature,
                    )
                )
            if parts:
                d[mask] = torch.cat(parts)
        self._weigh(inputs, d, inputs["sgcd_entropy"], mask, any_reference=True)
        self._flush_timings()


def _loss_mask(output: dict[str, Any]) -> torch.Tensor:
    """Tokens TRL's loss trains on: completion tokens that are not tool results (`completion_mask * tool_mask`)."""
    mask = output["completion_mask"].bool()
    return mask & output["tool_mask"].bool() if "tool_mask" in output else mask


def _backbone(model) -> torch.nn.Module:
    """The module whose output TRL's fused LM head projects: the causal LM's `base_model` (under PEFT too)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model
