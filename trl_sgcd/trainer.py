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

import copy
import textwrap
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from trl import GRPOTrainer

from .config import SGCDConfig
from .credit import (
    credit_advantages,
    credit_weights,
    gspo_token_old_logps,
    saliency_segments,
    signed_agreement,
    uniform_weights,
)
from .credit_dump import dump_path, write_batch
from .credit_logging import CreditLogger
from .diagnostics import ValidityGuard, declared_communication_tools, logger, tool_audit
from .dynamic_sampling import MixedGroupSampler
from .prompt_stream import StreamingPromptSampler
from .references import ContrastCreditReference, SiblingContextReference, ensure_sanitized
from .references.base import ProviderOutcome, resolve_references
from .sampling import GlobalRollouts
from .scoring import CreditScorer, _backbone, _loss_mask
from .siblings import CreditReference
from .teacher_context import literal_token_mask


# Teacher-side credit features carried to the loss forward when the student pass is fused into it.
_FUSED_KEYS = ("sgcd_support_ids", "sgcd_teacher_q", "sgcd_entropy", "sgcd_credit_mask")
_METADATA_COLUMNS = ("task_id", "answer_literals", "category", "expert_action")


class SGCDGRPOTrainer(CreditScorer, MixedGroupSampler, CreditLogger, GRPOTrainer):
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
        self._gspo_token = config.importance_sampling_level == "sequence" and config.credit_spec.token_level
        if self._gspo_token:
            self.importance_sampling_level = "token"

    def _resolve_student_pass(self) -> bool:
        """Whether the student distribution comes from TRL's loss forward (`SGCDConfig.student_pass`)."""
        args = self.args
        if args.student_pass == "separate" or not args.credit_spec.fusable or args.segmenter_needs_batch:
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
        if self.args.credit_spec.scores:
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
        if self.args.credit_spec.aux_sd_loss and "sgcd_sd_ids" in inputs:
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
                "provider/loop_restarts": outcome.loop_restarts,
                "provider/latency_s": outcome.latency_s,
                **{f"provider_metrics/{k}": float(v) for k, v in extra.items()},
            }
            payload = [contexts, stats]
        broadcast_object_list(payload, from_process=0)
        contexts, stats = payload
        for key in ("calls", "failures", "timeouts", "errors", "empty", "loop_restarts"):
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
        if self.args.credit_spec.raw_reference:
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

    def _apply_credit(self, output: dict[str, Any], rollouts: GlobalRollouts) -> dict[str, Any]:
        spec = self.args.credit_spec
        device = self.accelerator.device
        with self._timed("provider"):
            contexts = self._teacher_contexts(rollouts)
        start, end = rollouts.local_start, rollouts.local_end
        groups = [rollouts.group_of(r) for r in range(start, end)]
        local_refs = [contexts[g] for g in groups]
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
            if spec.advantages == "logp_gap":
                self._write_advantages(output, torch.zeros_like(completion_ids, dtype=advantages.dtype))
            self._log_credit_skipped()
            return output

        dump = self.args.credit_log_steps > 0 and self.state.global_step % self.args.credit_log_steps == 0
        # Credit precision needs the weights here, so rows with an expert action take the separate student pass.
        expert = any(m.get("expert_action") for m in rollouts.metadata or [])  # global: every process gathers
        fused = self._fuse_student and not dump and not expert
        scores = self._score(output, rollouts, local_refs, contexts, fused=fused, observed_logps=dump)
        self._log_scoring(scores)
        if scores.fused:  # the student side and the weights come with TRL's loss forward
            output.update(
                sgcd_support_ids=scores.support_ids,
                sgcd_teacher_q=scores.teacher_q,
                sgcd_entropy=scores.entropy,
                sgcd_credit_mask=credit_mask,
            )
            return output
        d, h = scores.divergence * credit_mask, scores.entropy
        if self.args.segment_signed and spec.weights is not None:
            d = d * signed_agreement(scores.log_ratio, advantages)
        if spec.weights is None:
            weights = torch.ones_like(d)
            if spec.advantages == "logp_gap":
                self._write_advantages(output, scores.log_ratio * credit_mask)
            if spec.aux_sd_loss:
                output.update(
                    sgcd_sd_ids=scores.sd_ids,
                    sgcd_sd_q=scores.sd_q,
                    sgcd_sd_keep=scores.sd_keep,
                    sgcd_sd_mask=credit_mask,
                )
            self._log_credit(
                output,
                weights=weights,
                raw=weights,
                d=d,
                h=h,
                credit_mask=credit_mask,
                spans=[],
                any_reference=any_reference,
            )
        else:
            weights = self._weigh(output, d, h, credit_mask, any_reference, torch.tensor(groups))
        if dump:
            self._dump_credit_batch(output, rollouts, local_refs, weights, credit_mask, advantages, scores)
        if expert and spec.weights is not None:
            self._log_precision(output, rollouts, weights, credit_mask)
        return output

    def _write_advantages(self, batch: dict[str, Any], advantages: torch.Tensor) -> None:
        """The one place the credit pipeline replaces TRL's advantages: `(B,)` becomes `(B, T)` (or stays `(B,)`)."""
        batch["advantages"] = advantages

    def _weigh(self, batch, d, h, credit_mask, any_reference: bool, groups=None) -> torch.Tensor:
        """Saliency (`groups`: each row's group) → bounded weights → `batch["advantages"] = A · W`; returns `W`."""
        with self._timed("credit_math"):
            siblings = dict(groups=groups, advantages=batch["advantages"], assistant_mask=_loss_mask(batch))
            saliency, spans = saliency_segments(d, h, credit_mask, self.args.segmenter, **siblings)
            raw = 1.0 + self.args.credit_gamma * saliency
            weights = credit_weights(saliency, self.args.credit_gamma, self.args.credit_cap)
            if self.args.credit_spec.weights == "uniform":
                weights = uniform_weights(weights, credit_mask)
            self._write_advantages(batch, credit_advantages(batch["advantages"], weights))
        self._log_credit(
            batch,
            weights=weights,
            raw=raw,
            d=d,
            h=h,
            credit_mask=credit_mask,
            spans=spans,
            any_reference=any_reference,
        )
        return weights

    # ------------------------------------------------------------------ credit dump

    def _dump_credit_batch(self, output, rollouts, local_refs, weights, credit_mask, advantages, scores) -> None:
        """Writes the credit of this batch as JSON lines (for `trl-sgcd visualize`); contains the references."""
        write_batch(
            dump_path(self.args.output_dir, self.state.global_step, self.accelerator.process_index),
            step=self.state.global_step,
            rollouts=rollouts,
            output=output,
            loss_mask=_loss_mask(output),
            local_refs=local_refs,
            weights=weights,
            credit_mask=credit_mask,
            sequence_advantages=advantages,
            decode=self._tokenizer.decode,
            raw=self.args.credit_dump_raw,
            features=scores,
        )


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
