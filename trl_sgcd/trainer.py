"""`SGCDGRPOTrainer`: the TRL glue of Sibling-Guided Credit Distillation.

All TRL-specific code lives here, so a TRL upgrade touches one file. The trainer overrides three hooks, each only with
`super()` calls plus post-processing of their results (no TRL method body is copied):

- `_calculate_rewards`: records the prompts, transcripts and gathered rewards of the batch being scored;
- `_generate_and_score_completions`: dynamic sampling of mixed groups, then the credit pipeline, which turns TRL's
  `(B,)` advantages into `(B, T)` credit-weighted advantages (TRL's loss accepts both shapes);
- `compute_loss`: only in the `direct_sd` baseline, which adds an auxiliary distillation loss.

With `use_vllm=True` generation happens in vLLM, but the teacher and student scoring passes still run on the training
model (`self.model`), exactly like TRL's own old/reference log-probabilities; nothing here assumes transformers
generation. This path cannot be exercised without a GPU and is untested here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import textwrap
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import IterableDataset
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from .config import FUSABLE_MODES, TOKEN_LEVEL_MODES, SGCDConfig
from .credit import (
    credit_advantages,
    credit_weights,
    gspo_token_old_logps,
    observed_anchored_divergence,
    saliency_segments,
    signed_agreement,
    student_support_divergence,
    support_entropy,
    teacher_divergence,
    teacher_topk,
    uniform_weights,
)
from .credit.precision import precision_from_sums, precision_sums
from .diagnostics import ValidityGuard, credit_statistics, declared_communication_tools, logger, tool_audit
from .prefix_cache import continuation_positions, prefix_sharing_error, repeat_prefix_cache
from .prompt_stream import StreamingPromptSampler
from .references import ContrastCreditReference, SiblingContextReference, ensure_sanitized
from .references.base import ProviderOutcome, resolve_references
from .sampling import GlobalRollouts, pad_to_width, plan_refill
from .siblings import CreditReference
from .teacher_context import insert_reference, literal_token_mask


# Teacher-side credit features carried to the loss forward when the student pass is fused into it.
_FUSED_KEYS = ("sgcd_support_ids", "sgcd_teacher_q", "sgcd_entropy", "sgcd_credit_mask")
_DENSE_HEAD_FACTOR = 64  # fused student side: project the full head when V <= this x (K + 1), else gather rows
_METADATA_COLUMNS = ("task_id", "answer_literals", "category", "expert_action")


class SGCDGRPOTrainer(GRPOTrainer):
    """GRPO with Sibling-Guided Credit Distillation.

    Introduced in [Keep Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use
    Agents](https://arxiv.org/abs/2606.12634). Policy gradient stays the only actor-gradient path; distillation is used
    only to decide *which tokens* of a rollout carry its advantage. For every mixed group of sibling rollouts a
    credit-reference provider writes a training-only reference; the same policy scores each rollout with and without it;
    the detached divergence and teacher entropy give a saliency `s`, and the GRPO token advantage becomes
    `A · clip(1 + γ·s, 1, c)`.

    Args:
        *args, **kwargs: everything [`~trl.GRPOTrainer`] accepts (model, reward functions, datasets, `tools`,
            `environment_factory`, `rollout_func`, `peft_config`, ...). `args` must be an [`SGCDConfig`].
        credit_reference: a [`CreditReferenceProvider`], or any callable `(SiblingGroup) -> CreditReference | str |
            None` (sync or async). `None` uses the LLM-free [`ContrastCreditReference`].

    Example:

    ```python
    from trl_sgcd import SGCDConfig, SGCDGRPOTrainer, LiteLLMCreditReference

    trainer = SGCDGRPOTrainer(
        model="Qwen/Qwen3-0.6B",
        reward_funcs=my_reward,
        args=SGCDConfig(output_dir="out", num_generations=8),
        train_dataset=dataset,
        credit_reference=LiteLLMCreditReference("openai/gpt-4.1-mini"),
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "grpo", "sgcd"]
    _name = "SGCD"
    _paper = {
        "title": "Keep Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use Agents",
        "id": "2606.12634",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{ding2026sgcd,
                title        = {{Keep Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use Agents}},
                author       = {Tianyu Ding and Jianhong Xin and Juan Pablo De la Cruz Weinstein},
                year         = 2026,
                eprint       = {arXiv:2606.12634},
            }"""),
    }

    def __init__(self, *args, credit_reference: Any = None, **kwargs):
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if config is None:
            model = kwargs.get("model", args[0] if args else None)
            name = (
                model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
            )
            config = SGCDConfig(f"{str(name).split('/')[-1]}-SGCD")
            if len(args) > 2:
                args = (*args[:2], config, *args[3:])
            else:
                kwargs["args"] = config
        if not isinstance(config, SGCDConfig):
            raise TypeError(
                f"SGCDGRPOTrainer needs an SGCDConfig, got {type(config).__name__}. Build it with "
                "SGCDConfig(**grpo_config.to_dict()) or pass the SGCD fields to SGCDConfig directly."
            )
        super().__init__(*args, **kwargs)

        if config.dynamic_sampling:
            if self.train_dataset is None:
                raise ValueError(
                    "dynamic_sampling=True resamples new prompts from the train_dataset, so it needs one. Pass one, or "
                    "set dynamic_sampling=False."
                )
            image_columns = {"image", "images"} & set(getattr(self.train_dataset, "column_names", None) or ())
            if self._is_vlm and image_columns:
                raise ValueError(
                    f"dynamic_sampling=True regroups rollouts across generation rounds, which image inputs (column "
                    f"{sorted(image_columns)[0]!r}) cannot be; set dynamic_sampling=False for image prompts. Text-only "
                    "prompts with a multimodal processor are supported."
                )
        # User callables are wrapped so that they, too, only ever see sanitized sibling traces.
        self.credit_reference = ensure_sanitized(
            credit_reference if credit_reference is not None else ContrastCreditReference()
        )
        self._sibling_context = SiblingContextReference(max_chars=config.sibling_context_max_chars)
        self._guard = ValidityGuard(config.inert_warning_steps)
        self._stash: dict[str, Any] | None = None
        self._prefetched: tuple[dict[int, tuple[Future, int]], list[Future]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stream_head: bool | None = None  # decided on the first scoring pass (`_check_stream_head`)
        self._share_prefix: bool | None = None  # decided on the first scoring pass (`_check_prefix_sharing`)
        self._lm_head = None
        self._aux_sampler_iter = None
        self._aux_epoch = 0
        self._prompt_stream: StreamingPromptSampler | None = None
        self._totals: dict[str, float] = defaultdict(float)
        self._timings: dict[str, float] = defaultdict(float)
        self._pending_credit: dict[str, Any] | None = None  # the micro-batch whose weights the loss forward forms
        self._fuse_student = self._resolve_student_pass()
        # Sequence-level importance sampling in a per-token credit mode runs as GSPO-token on TRL's token path.
        self._gspo_token = config.importance_sampling_level == "sequence" and config.credit_mode in TOKEN_LEVEL_MODES
        if self._gspo_token:
            self.importance_sampling_level = "token"

    def _resolve_student_pass(self) -> bool:
        """Whether the student distribution comes from TRL's loss forward (`SGCDConfig.student_pass`)."""
        args = self.args
        if args.student_pass == "separate" or args.credit_mode not in FUSABLE_MODES:
            return False
        blockers = []
        if args.num_iterations > 1:
            blockers.append(f"num_iterations={args.num_iterations} (the policy moves between a batch's loss passes)")
        if args.steps_per_generation > args.gradient_accumulation_steps:
            blockers.append(
                f"steps_per_generation={args.steps_per_generation} > gradient_accumulation_steps="
                f"{args.gradient_accumulation_steps} (later micro-batches are scored by an updated policy)"
            )
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3):
            blockers.append("a sharded model (ZeRO-3 or FSDP): the LM head is not materialised outside its forward")
        dropout = _active_dropout(self.accelerator.unwrap_model(self.model))
        if dropout:
            blockers.append(f"active dropout ({dropout}): the loss forward would score a dropout sample")
        if blockers and args.student_pass == "fused":
            raise ValueError(
                "student_pass='fused' needs the loss forward to score the sampling policy; blocked by "
                + "; ".join(blockers)
                + ". Use student_pass='auto' or 'separate'."
            )
        if blockers:
            logger.info("SGCD: scoring the student in a separate pass because of %s.", "; ".join(blockers))
        return not blockers

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

    # ------------------------------------------------------------------ TRL hooks

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._stash = {
            "prompts": copy.deepcopy(prompts),
            "completions": copy.deepcopy(completions),
            "rewards_per_func": rewards_per_func,
            "environments": list(self._batch_environments) if self.environment_factories is not None else None,
            "metadata": [{k: row[k] for k in _METADATA_COLUMNS if k in row} for row in inputs],
        }
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        self._timings.clear()
        if self.args.dynamic_sampling:
            output, rollouts = self._sample_mixed_groups(inputs)
        else:
            with self._timed("generation"):
                output = super()._generate_and_score_completions(inputs)
            rollouts = self._gather_rollouts()
        successes = [rollouts.success(r) for r in range(len(rollouts))]
        talk = declared_communication_tools(self.environments or ())
        for name, value in tool_audit(rollouts.completions, successes, talk).items():
            self._log(f"tools/{name}", value)
        self._log("groups/mixed_frac", len(rollouts.mixed_groups()) / max(1, rollouts.num_groups))
        if self.args.credit_mode != "off":
            output = self._apply_credit(output, rollouts)
        self._flush_timings()
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # With the student pass fused, this micro-batch's weights are formed inside TRL's loss forward (below); with
        # GSPO-token, its "old" log-probabilities are set there (on a copy: TRL reuses the buffered batch).
        fused = self.model.training and _FUSED_KEYS[0] in inputs
        gspo = self._gspo_token and inputs.get("old_per_token_logps") is not None
        if gspo:
            inputs = dict(inputs)
        self._pending_credit = inputs if fused or gspo else None
        try:
            loss = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            self._pending_credit = None
        if self.args.credit_mode == "direct_sd" and "sgcd_sd_ids" in inputs:
            sd_loss = self._direct_sd_loss(model, inputs)
            normalizer = self.current_gradient_accumulation_steps if self.model.training else 1.0
            loss = loss + self.args.direct_sd_coef * sd_loss / normalizer
            self._log("direct_sd/loss", self.accelerator.gather(sd_loss.detach()).mean().item())
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """TRL's log-probability pass. For a loss micro-batch with GSPO-token it replaces the batch's "old"
        log-probabilities so that TRL's token ratio becomes GSPO-token's (`credit.importance`); for one pending fused
        credit, it also captures the final hidden states (the backbone output TRL's fused LM head projects) and forms
        the credit weights from them."""
        inputs, self._pending_credit = self._pending_credit, None
        if inputs is None or _FUSED_KEYS[0] not in inputs:
            result = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            if inputs is not None:
                inputs["old_per_token_logps"] = gspo_token_old_logps(
                    result[0], inputs["old_per_token_logps"], _loss_mask(inputs)
                )
            return result
        captured: list[torch.Tensor] = []

        def capture(module, module_args, output):
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            captured.append(hidden.detach())

        handle = _backbone(self.accelerator.unwrap_model(model)).register_forward_hook(capture)
        try:
            result = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        finally:
            handle.remove()
        hidden = torch.cat(captured)[:, -logits_to_keep - 1 : -1]
        self._fused_credit(inputs, hidden, result[0].detach())
        if self._gspo_token and inputs.get("old_per_token_logps") is not None:
            inputs["old_per_token_logps"] = gspo_token_old_logps(
                result[0], inputs["old_per_token_logps"], _loss_mask(inputs)
            )
        return result

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

    # ------------------------------------------------------------------ sampling

    def _gather_rollouts(self) -> GlobalRollouts:
        """The batch just scored by TRL, gathered across processes (identical on every rank)."""
        stash = self._stash
        rewards_per_func = stash["rewards_per_func"]
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        local = len(stash["prompts"])
        start = self.accelerator.process_index * local
        environments = stash["environments"]
        return GlobalRollouts(
            prompts=gather_object(stash["prompts"]),
            completions=gather_object(stash["completions"]),
            rewards=rewards.tolist(),
            num_generations=self.num_generations,
            success_threshold=self.args.success_threshold,
            environments=None if environments is None else gather_object(environments),
            metadata=gather_object(stash["metadata"]),
            local_start=start,
            local_end=start + local,
        )

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
            if self.args.prefetch_references and self.args.credit_mode != "off" and self.accelerator.is_main_process:
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

    # ------------------------------------------------------------------ credit

    def _teacher_contexts(self, rollouts: GlobalRollouts) -> list[CreditReference | None]:
        """One teacher context per group (None for non-mixed groups and failed provider calls), same on all ranks."""
        mixed = rollouts.mixed_groups()
        payload: list[Any] = [None, None]
        if self.accelerator.is_main_process:
            contexts: list[CreditReference | None] = [None] * rollouts.num_groups
            provider = self._context_provider()
            if self._prefetched is not None:
                by_group, futures = self._prefetched
                self._prefetched = None
                # Wait for every call made this step (also for groups that did not make the batch: they cost too).
                outcome = ProviderOutcome.merge([future.result() for future in futures])
                references = [by_group[g][0].result().references[by_group[g][1]] for g in mixed]
            else:
                outcome = self._resolve([rollouts.sibling_group(g) for g in mixed])
                references = outcome.references
            extra = provider.pop_metrics()
            for message in outcome.error_messages[:3]:
                logger.warning("[SGCD] credit-reference provider failed for a group (W = 1): %s", message)
            for g, ref in zip(mixed, references, strict=True):
                contexts[g] = ref
            stats = {
                "provider/calls": outcome.calls if provider is self.credit_reference else 0,
                "provider/failures": outcome.failures,
                "provider/timeouts": outcome.timeouts,
                "provider/errors": outcome.errors,
                "provider/empty": outcome.empty,
                "provider/latency_s": outcome.latency_s,
                **{f"provider_metrics/{k}": float(v) for k, v in extra.items()},
            }
            payload = [contexts, stats]
        broadcast_object_list(payload, from_process=0)
        contexts, stats = payload
        for key in ("calls", "failures", "timeouts", "errors", "empty"):
            self._totals[key] += stats[f"provider/{key}"]
            self._log(f"provider/{key}_total", self._totals[key])
        for key, value in stats.items():
            self._log(key, value)
        with_ref = [c for c in contexts if c is not None]
        self._log("reference/groups_with_reference", len(with_ref))
        self._log("reference/chars_mean", sum(len(c.text) for c in with_ref) / max(1, len(with_ref)))
        return contexts

    def _context_provider(self):
        """The credit-reference provider, or for `sibling_context`/`sdpo` the raw successful trace (no summariser)."""
        if self.args.credit_mode in ("sibling_context", "sdpo"):
            return self._sibling_context
        return self.credit_reference

    def _resolve(self, groups: list) -> ProviderOutcome:
        """Teacher contexts for `groups` (main process only)."""
        return resolve_references(
            self._context_provider(),
            groups,
            max_concurrency=self.args.provider_max_concurrency,
            timeout=self.args.provider_timeout,
        )

    def _provider_pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sgcd-provider")
        return self._executor

    def _reference_block(self, reference: CreditReference) -> str:
        """The reference wrapped for the teacher prompt, truncated to `max_reference_tokens` policy tokens."""
        text = reference.text
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.args.max_reference_tokens:
            text = self._tokenizer.decode(ids[: self.args.max_reference_tokens]) + " …"
        return self.args.reference_template.format(reference=text)

    def _apply_credit(self, output: dict[str, Any], rollouts: GlobalRollouts) -> dict[str, Any]:
        mode = self.args.credit_mode
        device = self.accelerator.device
        with self._timed("provider"):
            contexts = self._teacher_contexts(rollouts)
        start, end = rollouts.local_start, rollouts.local_end
        local_refs = [contexts[rollouts.group_of(r)] for r in range(start, end)]
        completion_ids = output["completion_ids"]
        loss_mask = _loss_mask(output)
        has_ref = torch.tensor([r is not None for r in local_refs], dtype=torch.bool, device=device)

        # Tokens that carry credit: assistant tokens of rows with a reference, minus masked literals.
        credit_mask = loss_mask & has_ref.unsqueeze(1)
        for i, ref in enumerate(local_refs):
            if ref is not None and ref.masked_literals:
                ids = completion_ids[i][loss_mask[i]].tolist()
                literal = literal_token_mask(ids, ref.masked_literals, self._tokenizer).to(device)
                row = credit_mask[i].clone()
                row[loss_mask[i]] &= ~literal
                credit_mask[i] = row

        any_reference = any(c is not None for c in contexts)
        advantages = output["advantages"]
        if not any_reference:
            if mode == "sdpo":
                output["advantages"] = torch.zeros_like(completion_ids, dtype=advantages.dtype)
            self._log_credit_skipped()
            return output

        dump = self.args.credit_log_steps > 0 and self.state.global_step % self.args.credit_log_steps == 0
        # Credit precision needs the weights here, so rows with an expert action take the separate student pass.
        expert = any(m.get("expert_action") for m in rollouts.metadata or [])  # global: every process gathers
        fused = self._fuse_student and not dump and not expert and not self.args.segment_signed
        scores = self._score(output, rollouts, local_refs, contexts, fused=fused)
        self._log_scoring(scores)
        if "support_ids" in scores:  # fused: the student side and the weights come with TRL's loss forward
            output.update(
                sgcd_support_ids=scores["support_ids"],
                sgcd_teacher_q=scores["teacher_q"],
                sgcd_entropy=scores["entropy"],
                sgcd_credit_mask=credit_mask,
            )
            return output
        d, h = scores["divergence"] * credit_mask, scores["entropy"]
        if self.args.segment_signed and mode not in ("sdpo", "direct_sd"):
            d = d * signed_agreement(scores["teacher_logps"] - scores["student_logps"], advantages)
        if mode in ("sdpo", "direct_sd"):
            weights = torch.ones_like(d)
            if mode == "sdpo":
                output["advantages"] = (scores["teacher_logps"] - scores["student_logps"]) * credit_mask
            else:
                output.update(
                    sgcd_sd_ids=scores["sd_ids"],
                    sgcd_sd_q=scores["sd_q"],
                    sgcd_sd_keep=scores["sd_keep"],
                    sgcd_sd_mask=credit_mask,
                )
            self._log_credit(output, weights, weights, d, h, credit_mask, [], any_reference)
        else:
            weights = self._weigh(output, d, h, credit_mask, any_reference)
        if dump:
            self._dump_credit_batch(output, rollouts, local_refs, weights, credit_mask, advantages)
        if expert and mode not in ("sdpo", "direct_sd"):
            self._log_precision(output, rollouts, weights, credit_mask)
        return output

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

    def _weigh(self, batch, d, h, credit_mask, any_reference: bool) -> torch.Tensor:
        """Saliency → bounded weights → `batch["advantages"] = A · W` (paper Eq. 3-4); returns `W`."""
        with self._timed("credit_math"):
            saliency, spans = saliency_segments(d, h, credit_mask, self.args.segmenter)
            raw = 1.0 + self.args.credit_gamma * saliency
            weights = credit_weights(saliency, self.args.credit_gamma, self.args.credit_cap)
            if self.args.credit_mode == "uniform":
                weights = uniform_weights(weights, credit_mask)
            batch["advantages"] = credit_advantages(batch["advantages"], weights)
        self._log_credit(batch, weights, raw, d, h, credit_mask, spans, any_reference)
        return weights

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

    def _score(self, output, rollouts, local_refs, contexts, fused: bool = False) -> dict[str, torch.Tensor]:
        """Teacher and student scoring passes over the local rows that have a teacher context.

        Rows are scored per unit of siblings sharing a prompt (see `_scoring_units`). Every rank runs the same number
        of forwards, padding with one-token forwards when it has less to score, so sharded models (ZeRO-3, FSDP) see
        matched collectives. With `fused` (and a streamable LM head) only the teacher pass runs, and the result holds
        the teacher's top-K support for `_fused_credit` instead of the divergence.
        """
        mode = self.args.credit_mode
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

        d = torch.zeros(batch, width, device=device)
        h = torch.zeros(batch, width, device=device)
        result: dict[str, torch.Tensor] = {"divergence": d, "entropy": h}
        if mode == "sdpo" or self.args.segment_signed:
            result["teacher_logps"] = torch.zeros(batch, width, device=device)
            result["student_logps"] = torch.zeros(batch, width, device=device)
        if mode == "direct_sd":
            k = min(self.args.divergence_top_k, self.model.config.get_text_config().vocab_size)
            result["sd_ids"] = torch.zeros(batch, width, k + 1, dtype=torch.long, device=device)
            result["sd_q"] = torch.zeros(batch, width, k + 2, device=device)
            result["sd_keep"] = torch.zeros(batch, width, k + 1, dtype=torch.bool, device=device)

        t0 = time.perf_counter()
        teacher_tokens = student_tokens = forwards = 0
        with self._scoring_mode():
            if self._stream_head is None:
                self._check_stream_head()
            if fused and self._stream_head:
                k = min(self.args.divergence_top_k, self._lm_head.weight.size(0))
                result["support_ids"] = torch.zeros(batch, width, k + 1, dtype=torch.long, device=device)
                result["teacher_q"] = torch.zeros(batch, width, k + 2, device=device)
            passes = 1 if "support_ids" in result else 2
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
        result["time_s"] = torch.tensor(time.perf_counter() - t0)
        result["teacher_tokens"] = torch.tensor(teacher_tokens)
        result["student_tokens"] = torch.tensor(student_tokens)
        return result

    def _accumulate_features(self, result, idx, teacher_features, student_features, completion_ids, loss_mask):
        """Writes the credit features of rows `idx` into `result` (only at their assistant tokens).

        Logits are formed `credit_token_chunk` positions at a time, so neither pass's `(B, T, V)` distribution is ever
        held in full (float32 or otherwise) when the LM head is streamed. Without `student_features` (fused student
        pass) only the teacher's entropy and top-K support are kept.
        """
        mode = self.args.credit_mode
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
            if mode == "sdpo" or self.args.segment_signed:
                for name, logits in (("teacher_logps", teacher_logits), ("student_logps", student_logits)):
                    logps = torch.log_softmax(logits.float() / self.temperature, dim=-1)
                    parts[name].append(logps.gather(-1, obs.unsqueeze(-1)).squeeze(-1))
            if mode == "direct_sd":
                ids_k, q_k, keep_k = teacher_topk(teacher_logits, obs, self.args.divergence_top_k, self.temperature)
                parts["sd_ids"].append(ids_k)
                parts["sd_q"].append(q_k)
                parts["sd_keep"].append(keep_k)
        for name, values in parts.items():
            block = result[name][rows]
            block[sel] = torch.cat(values).to(block.dtype)
            result[name][rows] = block

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

    # ------------------------------------------------------------------ logging

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
        self._guard.check(False, False, False, False, False)
        self._log("weights/mean", 1.0)
        self._log("advantage_inflation", 1.0)
        self._log("segments/count", 0)

    def _log_scoring(self, scores: dict[str, torch.Tensor]) -> None:
        device = self.accelerator.device
        values = torch.stack([scores[k].to(device).float() for k in ("time_s", "teacher_tokens", "student_tokens")])
        totals = self.accelerator.gather(values.unsqueeze(0)).sum(0)
        self._log("scoring/time_s", totals[0].item() / self.accelerator.num_processes)
        self._log("scoring/teacher_tokens", totals[1].item())
        self._log("scoring/student_tokens", totals[2].item())

    def _log_credit(self, output, weights, raw, d, h, credit_mask, spans, any_reference):
        loss_mask = _loss_mask(output)
        token_adv = output["advantages"]
        if token_adv.dim() == 1:
            token_adv = token_adv.unsqueeze(1).expand_as(weights)
        seq_adv = token_adv if self.args.credit_mode == "sdpo" else token_adv / weights
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
            any_reference,
            features_zero,
            inert and self.args.credit_mode in ("sgcd", "uniform", "sibling_context"),
            bool(totals[5] > 0),
            weights.requires_grad,
        )
        for key, value in guard.items():
            self._log(key, value)

    def _dump_credit_batch(self, output, rollouts, local_refs, weights, credit_mask, sequence_advantages) -> None:
        """Writes the credit of this batch as JSON lines (for `trl-sgcd visualize`); contains the references."""
        directory = os.path.join(self.args.output_dir, "sgcd_credit")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"step_{self.state.global_step:06d}_rank{self.accelerator.process_index}.jsonl")
        loss_mask = _loss_mask(output)
        advantages = output["advantages"]
        with open(path, "w") as f:
            for i in range(output["completion_ids"].size(0)):
                row = rollouts.local_start + i
                length = int(output["completion_mask"][i].sum())
                ids = output["completion_ids"][i][:length].tolist()
                adv = advantages[i] if advantages.dim() == 1 else advantages[i][loss_mask[i]].mean()
                record = {
                    "step": self.state.global_step,
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
                    "tokens": [self._tokenizer.decode([t]) for t in ids],
                    "weights": weights[i][:length].tolist(),
                    "assistant_mask": loss_mask[i][:length].int().tolist(),
                    "credit_mask": credit_mask[i][:length].int().tolist(),
                    "reference": local_refs[i].text if local_refs[i] is not None else None,
                }
                f.write(json.dumps(record, default=str) + "\n")


def _loss_mask(output: dict[str, Any]) -> torch.Tensor:
    """Tokens TRL's loss trains on: completion tokens that are not tool results (`completion_mask * tool_mask`)."""
    mask = output["completion_mask"].bool()
    return mask & output["tool_mask"].bool() if "tool_mask" in output else mask


def _backbone(model) -> torch.nn.Module:
    """The module whose output TRL's fused LM head projects: the causal LM's `base_model` (under PEFT too)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model


def _active_dropout(model) -> str:
    """Describes the first active dropout of `model` (config rate or `nn.Dropout` module), or `""` if none."""
    config = model.config.get_text_config()
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and value > 0:
            return f"config.{name}={value}"
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            return f"{name}.p={module.p}"
    return ""
