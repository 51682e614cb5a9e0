from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from string import Formatter

from trl import GRPOConfig

from .credit.divergence import DIVERGENCES
from .credit.segmenter import BASELINES, SegmenterConfig


_SEGMENTER = SegmenterConfig()  # the one home of the segmenter defaults


@dataclass(frozen=True)
class CreditModeSpec:
    """What one `credit_mode` does, declared once; the trainer reads these fields instead of branching on the name.

    Args:
        scores: runs the credit pipeline (teacher contexts, teacher and student passes); `False` only for `off`.
        raw_reference: the teacher context is a successful sibling's raw trace, not the credit-reference provider's.
        weights: how credit weights are formed: `"saliency"` (`clip(1 + γ·s, 1, c)`), `"uniform"` (the saliency
            weights' extra mass spread evenly over the credit tokens), or `None` (no weights; advantages per `advantages`).
        advantages: what the token advantages become: `"weighted"` (`A · W`), `"logp_gap"` (the teacher-minus-student
            log-probability of the observed token, SDPO), or `"sequence"` (TRL's `(B,)` advantages, unchanged).
        observed_logps: the scoring passes keep both log-probabilities of the observed token.
        aux_sd_loss: adds the uncapped top-K distillation loss to TRL's loss (`direct_sd_coef`).
    """

    scores: bool
    raw_reference: bool = False
    weights: str | None = "saliency"
    advantages: str = "weighted"
    observed_logps: bool = False
    aux_sd_loss: bool = False

    @property
    def token_level(self) -> bool:
        """Per-token advantages: with `importance_sampling_level='sequence'` the mode runs as GSPO-token."""
        return self.advantages != "sequence"

    @property
    def fusable(self) -> bool:
        """`student_pass="fused"` can form the weights inside TRL's loss forward."""
        return self.weights is not None


CREDIT_MODE_SPECS: dict[str, CreditModeSpec] = {
    "sgcd": CreditModeSpec(scores=True),
    "off": CreditModeSpec(scores=False, weights=None, advantages="sequence"),
    "uniform": CreditModeSpec(scores=True, weights="uniform"),
    "sibling_context": CreditModeSpec(scores=True, raw_reference=True),
    "direct_sd": CreditModeSpec(scores=True, weights=None, advantages="sequence", aux_sd_loss=True),
    "sdpo": CreditModeSpec(scores=True, raw_reference=True, weights=None, advantages="logp_gap", observed_logps=True),
}
CREDIT_MODES = tuple(CREDIT_MODE_SPECS)
TOKEN_LEVEL_MODES = tuple(mode for mode, spec in CREDIT_MODE_SPECS.items() if spec.token_level)
FUSABLE_MODES = tuple(mode for mode, spec in CREDIT_MODE_SPECS.items() if spec.fusable)
STUDENT_PASSES = ("auto", "fused", "separate")
REFERENCE_POSITIONS = ("system", "user")

DEFAULT_REFERENCE_TEMPLATE = (
    "[Training-only credit reference. It summarizes successful and failed attempts at this same task. Use it to "
    "judge each step; it is not part of the user's request.]\n{reference}"
)


@dataclass
class SGCDConfig(GRPOConfig):
    r"""
    Configuration class for [`SGCDGRPOTrainer`].

    Extends [`~trl.GRPOConfig`] with the parameters of Sibling-Guided Credit Distillation (SGCD), introduced in [Keep
    Policy Gradient in Charge: Sibling-Guided Credit Distillation for Long-Horizon Tool-Use
    Agents](https://arxiv.org/abs/2606.12634). Every other parameter is inherited unchanged from `GRPOConfig`.

    Parameters:
        > Credit signal

        credit_mode (`str`, *optional*, defaults to `"sgcd"`):
            Which credit signal reshapes the GRPO advantages. Everything else (sampling, rewards, loss) is identical
            across modes, so they form matched ablations:

            - `"sgcd"`: the full method: credit reference → teacher/student divergence → saliency → `W = clip(1 + γ·s,
              1, c)` → `Â = A·W`.
            - `"off"`: the matched GRPO control: same (dynamic) sampling, `W ≡ 1`, no teacher pass, no provider calls.
            - `"uniform"`: the teacher pass runs but each rollout's weights are replaced by their mean (same advantage
              mass, no localisation).
            - `"sibling_context"`: no summariser; the teacher context is the raw sanitised successful sibling trace.
            - `"direct_sd"`: GRPO plus an uncapped top-K `KL(student || teacher)` auxiliary loss with coefficient
              `direct_sd_coef` (a real gradient path: the failure baseline).
            - `"sdpo"`: SDPO-style baseline: the per-token advantage `log π_teacher − log π_student` (teacher context:
              a successful sibling) replaces the reward advantage.
        credit_gamma (`float`, *optional*, defaults to `1.0`):
            Saliency gain `γ` in `W = clip(1 + γ·s, 1, c)`. Must be `>= 0`; `0` recovers GRPO exactly.
        credit_cap (`float`, *optional*, defaults to `2.0`):
            Upper bound `c` of the credit weights. Must be `> 1`.
        divergence (`str`, *optional*, defaults to `"reverse_kl"`):
            Teacher/student divergence on the top-K support: `"reverse_kl"` (`KL(p_student || q_teacher)`, the
            paper's choice), `"forward_kl"` or `"jsd"`.
        divergence_top_k (`int`, *optional*, defaults to `100`):
            Number of teacher top tokens in the divergence support (plus the observed token and a tail bucket).

        > Saliency segmenter (the paper gives no thresholds; these are documented proposals)

        segment_spike_z (`float`, *optional*, defaults to `3.0`):
            Robust z-score (median/MAD within the rollout) at which a divergence value is a spike.
        segment_entropy_tolerance (`float`, *optional*, defaults to `0.5`):
            A span keeps growing while the teacher entropy stays within this many nats above its value at the spike.
        segment_reset_z (`float`, *optional*, defaults to `0.5`):
            A span ends when the divergence z-score falls below this value (a divergence reset).
        segment_max_tokens (`int`, *optional*, defaults to `64`):
            Maximum span length in tokens.
        segment_saliency_floor (`float`, *optional*, defaults to `0.5`):
            Minimum saliency of a token inside a span (the saliency is `max(d / q99(d), floor)` there).
        segment_max_fraction (`float`, *optional*, defaults to `0.25`):
            Cap on the fraction of a rollout's assistant tokens covered by spans; the spans with the highest mean
            z-score are kept.
        segment_min_divergence (`float`, *optional*, defaults to `1e-4`):
            Minimum absolute divergence (nats) of a spike, so numerical noise never starts a span.
        segment_signed (`bool`, *optional*, defaults to `False`):
            This package's own option: signed disagreement on the observed token. A failed rollout keeps the
            divergence only where the teacher gives the observed token a lower log-probability than the student; a
            successful one only where it gives a higher one (see `trl_sgcd.credit.segmenter`). Needs the separate
            student pass, which it selects. `False` is the paper's unsigned divergence.
        segment_noise_floor (`float`, *optional*, defaults to `0.0`):
            This package's own option (not in the paper): absolute divergence (nats) below which a token is never a
            spike nor part of a span, so a rollout whose divergence is all noise keeps `W = 1`. The segmenter's z-score
            is scale-free; without a floor, a random-weight model (mean divergence ≈ 1.5e-4 nats, max ≈ 7e-4) still
            gets weights up to the cap. `0.0` is the paper's rule; `0.01` is far above such noise.
        segment_baseline (`str`, *optional*, defaults to `"success_position"`):
            What a divergence spike is measured against. `"rollout"` is the paper's rule (normalise within each
            rollout). This package's own options: `"group"` pools the normalisation over the rollout's sibling group;
            `"position"` subtracts, token by token, the other siblings' mean divergence at the aligned position (same
            assistant turn and offset); `"success_position"` (the default, chosen on the localization benchmark's dev
            split) takes that mean over the siblings with `A > 0`. Siblings diverge identically on identical opening
            moves, so these give them no credit. All but `"rollout"` need the separate student pass, which they
            select (`"rollout"` keeps the fused one), and see the siblings on the same process.

        > Sibling groups and dynamic sampling

        success_threshold (`float`, *optional*, defaults to `1.0`):
            A rollout is a success when its total (weighted) reward is `>= success_threshold`. A group is *mixed*
            when it has at least one success and one failure; only mixed groups get a credit reference.
        dynamic_sampling (`bool`, *optional*, defaults to `True`):
            Keep generating groups for new prompts until the generation batch is filled with mixed groups or
            `max_resample_rounds` extra rounds are spent; what cannot be filled is filled with the groups that were
            sampled first, and logged. Requires a `train_dataset` (map-style or iterable).
        max_resample_rounds (`int`, *optional*, defaults to `3`):
            Extra generation rounds per step allowed to fill the batch with mixed groups.
        resample_buffer_size (`int`, *optional*, defaults to `1000`):
            With an iterable (streaming) `train_dataset`, the resampling rounds draw their prompts from a buffer of at
            most this many records read ahead from the stream (a shuffle buffer when the dataset is shuffled).

        > Credit-reference provider

        provider_max_concurrency (`int`, *optional*, defaults to `16`):
            Maximum number of provider calls in flight during one step.
        provider_timeout (`float`, *optional*, defaults to `600.0`):
            Seconds after which a provider call counts as failed (its group trains with `W ≡ 1`), counted from when the
            call gets one of the `provider_max_concurrency` slots. The provider stage of a step (each dynamic-sampling
            round's, with prefetching) also has one deadline, `provider_timeout × ceil(groups /
            provider_max_concurrency)` seconds, kept by the training thread even if a provider blocks the event loop:
            groups not done by then train with `W ≡ 1` and count as timeouts. A safety net above the provider's own
            timeouts, retries and queueing (`LiteLLMCreditReference`: 60 s per attempt, 3 retries, at most 8 calls in
            flight); lower it together with those.
        prefetch_references (`bool`, *optional*, defaults to `True`):
            With dynamic sampling, start each round's provider calls as soon as its mixed groups are known, so they
            run while the next rounds generate. Without dynamic sampling there is nothing to overlap with (TRL
            computes rewards and log-probabilities before the trainer sees the batch) and the calls run in place.
            It saves the waves of calls that later rounds' generation hides (which matters when there are more mixed
            groups than `provider_max_concurrency`), and costs the calls of mixed groups the batch then leaves out.
        reference_position (`str`, *optional*, defaults to `"system"`):
            Where the credit reference goes in the teacher prompt: appended to the system message (created if
            absent) or to the last user message (`"user"`).
        reference_template (`str`, *optional*):
            Text wrapping the reference in the teacher prompt; must contain `{reference}`.
        max_reference_tokens (`int`, *optional*, defaults to `1024`):
            References longer than this (in policy tokens) are truncated before insertion.
        sibling_context_max_chars (`int`, *optional*, defaults to `6000`):
            Character budget of the raw successful trace used as teacher context by `sibling_context` and `sdpo`.

        > Baselines and runtime

        direct_sd_coef (`float`, *optional*, defaults to `0.1`):
            Coefficient `λ` of the auxiliary distillation loss in `direct_sd` mode.
        credit_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Rows per teacher/student scoring forward; `None` uses `per_device_train_batch_size`.
        credit_token_chunk (`int` or `None`, *optional*, defaults to `None`):
            Positions whose teacher and student logits are formed at once from the final hidden states (the LM head is
            applied in chunks), bounding the scoring memory at `O(credit_token_chunk · V)` instead of `O(B · T · V)`.
            `None` sizes the chunk to about 4M logits (16 MB in float32) and at least 64 positions: 64 positions for a
            150k vocabulary, thousands for a small one (fewer, larger ops).
        credit_shared_prefix (`bool`, *optional*, defaults to `True`):
            Score the prompt prefix shared by a group's siblings once (teacher and student pass alike) and reuse its
            KV cache for every sibling's completion: `P + n·T` tokens per pass instead of `n·(P + T)`. Set `False`
            to score each row in full (same values up to float rounding; used to check the shared path).
        student_pass (`str`, *optional*, defaults to `"auto"`):
            Where the student distribution comes from. `"fused"`: from the loss forward TRL already makes (its fused
            LM head returns the observed token's log-probability; the student's logits on the teacher's top-K
            support are `K + 1` dot products with the captured hidden states), so SGCD adds only the teacher pass;
            the credit weights are then formed at loss time. Exact only when that forward sees the policy that
            sampled the batch without dropout, so it needs `num_iterations=1`, `steps_per_generation <=
            gradient_accumulation_steps`, no active dropout and an unsharded LM head (not ZeRO-3 / FSDP), and the
            modes `sgcd`, `uniform`, `sibling_context`, and `segment_baseline="rollout"` without `segment_signed`
            (the other segmenter options weigh a rollout against its siblings, which a loss micro-batch does not
            hold; the default `"success_position"` scores separately). `"separate"`: a no-grad student scoring
            pass at generation time. `"auto"` fuses when all conditions hold and scores separately otherwise; `"fused"` raises when
            they don't. Batches that write a credit dump (`credit_log_steps`) are scored separately.
        credit_log_steps (`int`, *optional*, defaults to `0`):
            Every this many steps, write the batch's tokens, credit weights, rewards and references as JSON lines under
            `output_dir/sgcd_credit/` (for `trl-sgcd visualize`). `0` disables it. The files contain the references.
        credit_dump_raw (`bool`, *optional*, defaults to `False`):
            Credit dumps are masked by the sanitizer (messages, metadata, reference, tokens). `True` writes them
            unmasked; only for traces that hold no secrets.
        inert_warning_steps (`int`, *optional*, defaults to `20`):
            Validity guard: warn when references exist but the weights stayed `≡ 1` for this many consecutive steps.
    """

    credit_mode: str = field(
        default="sgcd",
        metadata={"help": "Credit signal.", "choices": list(CREDIT_MODES)},
    )
    credit_gamma: float = field(default=1.0, metadata={"help": "Saliency gain γ in W = clip(1 + γ·s, 1, c)."})
    credit_cap: float = field(default=2.0, metadata={"help": "Upper bound c of the credit weights (> 1)."})
    divergence: str = field(
        default="reverse_kl",
        metadata={"help": "Teacher/student divergence on the top-K support.", "choices": list(DIVERGENCES)},
    )
    divergence_top_k: int = field(default=100, metadata={"help": "Teacher top-K tokens in the divergence support."})
    segment_spike_z: float = field(
        default=_SEGMENTER.spike_z, metadata={"help": "Robust z-score of a divergence spike."}
    )
    segment_entropy_tolerance: float = field(
        default=_SEGMENTER.entropy_tolerance,
        metadata={"help": "Entropy rise (nats) above the spike's entropy that ends a span."},
    )
    segment_reset_z: float = field(
        default=_SEGMENTER.reset_z, metadata={"help": "Divergence z-score below which a span ends."}
    )
    segment_max_tokens: int = field(
        default=_SEGMENTER.max_span_tokens, metadata={"help": "Maximum span length in tokens."}
    )
    segment_saliency_floor: float = field(
        default=_SEGMENTER.saliency_floor, metadata={"help": "Minimum saliency inside a span."}
    )
    segment_max_fraction: float = field(
        default=_SEGMENTER.max_selected_fraction,
        metadata={"help": "Maximum fraction of a rollout's assistant tokens covered by spans."},
    )
    segment_min_divergence: float = field(
        default=_SEGMENTER.min_spike_divergence, metadata={"help": "Minimum divergence (nats) of a spike."}
    )
    segment_signed: bool = field(
        default=False,
        metadata={"help": "Keep the divergence only where the teacher's shift on the observed token agrees with A."},
    )
    segment_noise_floor: float = field(
        default=_SEGMENTER.noise_floor,
        metadata={"help": "Divergence (nats) below which a token never earns credit (0: paper's rule)."},
    )
    segment_baseline: str = field(
        default=_SEGMENTER.baseline,
        metadata={"help": "What a divergence spike is measured against.", "choices": list(BASELINES)},
    )
    success_threshold: float = field(
        default=1.0, metadata={"help": "A rollout succeeds when its total reward is >= this threshold."}
    )
    dynamic_sampling: bool = field(
        default=True, metadata={"help": "Resample new prompts until the batch holds mixed groups."}
    )
    max_resample_rounds: int = field(default=3, metadata={"help": "Extra generation rounds per step."})
    resample_buffer_size: int = field(
        default=1000, metadata={"help": "Records buffered from a streaming train_dataset for resampling."}
    )
    provider_max_concurrency: int = field(default=16, metadata={"help": "Maximum provider calls in flight."})
    provider_timeout: float = field(default=600.0, metadata={"help": "Seconds before a provider call fails."})
    prefetch_references: bool = field(
        default=True, metadata={"help": "Overlap provider calls with the next dynamic-sampling rounds."}
    )
    reference_position: str = field(
        default="system",
        metadata={"help": "Where the reference goes in the teacher prompt.", "choices": list(REFERENCE_POSITIONS)},
    )
    reference_template: str = field(
        default=DEFAULT_REFERENCE_TEMPLATE, metadata={"help": "Wrapper of the reference; contains {reference}."}
    )
    max_reference_tokens: int = field(default=1024, metadata={"help": "Truncate references to this many tokens."})
    sibling_context_max_chars: int = field(
        default=6000, metadata={"help": "Character budget of the raw sibling trace used as teacher context."}
    )
    direct_sd_coef: float = field(default=0.1, metadata={"help": "λ of the direct_sd auxiliary loss."})
    credit_batch_size: int | None = field(default=None, metadata={"help": "Rows per scoring forward."})
    credit_token_chunk: int | None = field(
        default=None, metadata={"help": "Positions per chunk of scoring logits (None: ~4M logits, at least 64)."}
    )
    credit_shared_prefix: bool = field(
        default=True, metadata={"help": "Score the siblings' shared prompt prefix once and reuse its KV cache."}
    )
    student_pass: str = field(
        default="auto",
        metadata={
            "help": "Student distribution: from TRL's loss forward or a separate pass.",
            "choices": list(STUDENT_PASSES),
        },
    )
    credit_log_steps: int = field(default=0, metadata={"help": "Dump the credit of a batch every N steps (0: off)."})
    credit_dump_raw: bool = field(
        default=False, metadata={"help": "Write credit dumps unmasked (secrets and evaluator data included)."}
    )
    inert_warning_steps: int = field(
        default=20, metadata={"help": "Warn after this many consecutive steps with inert weights."}
    )

    def __post_init__(self):
        self._check_numbers()
        if self.credit_mode not in CREDIT_MODES:
            raise ValueError(f"credit_mode={self.credit_mode!r} is not one of {CREDIT_MODES}.")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence={self.divergence!r} is not one of {DIVERGENCES}.")
        if self.segment_baseline not in BASELINES:
            raise ValueError(f"segment_baseline={self.segment_baseline!r} is not one of {BASELINES}.")
        if self.reference_position not in REFERENCE_POSITIONS:
            raise ValueError(f"reference_position={self.reference_position!r} is not one of {REFERENCE_POSITIONS}.")
        if self.student_pass not in STUDENT_PASSES:
            raise ValueError(f"student_pass={self.student_pass!r} is not one of {STUDENT_PASSES}.")
        if self.student_pass == "fused" and not self.credit_spec.fusable:
            raise ValueError(
                f"student_pass='fused' applies to credit_mode in {FUSABLE_MODES}, got credit_mode={self.credit_mode!r}."
            )
        if self.student_pass == "fused" and self.segmenter_needs_batch:
            raise ValueError(
                "student_pass='fused' needs segment_baseline='rollout' and segment_signed=False: the other segmenter "
                "options weigh a rollout against its siblings, which one loss micro-batch does not hold."
            )
        if self.credit_gamma < 0:
            raise ValueError(f"credit_gamma must be >= 0, got {self.credit_gamma}.")
        if self.credit_cap <= 1:
            raise ValueError(f"credit_cap must be > 1 (W = clip(1 + γ·s, 1, c)), got {self.credit_cap}.")
        if self.divergence_top_k < 1:
            raise ValueError(f"divergence_top_k must be >= 1, got {self.divergence_top_k}.")
        if self.max_resample_rounds < 0:
            raise ValueError(f"max_resample_rounds must be >= 0, got {self.max_resample_rounds}.")
        if self.resample_buffer_size < 1:
            raise ValueError(f"resample_buffer_size must be >= 1, got {self.resample_buffer_size}.")
        if self.provider_max_concurrency < 1:
            raise ValueError(f"provider_max_concurrency must be >= 1, got {self.provider_max_concurrency}.")
        if self.provider_timeout <= 0:
            raise ValueError(f"provider_timeout must be > 0, got {self.provider_timeout}.")
        self._check_reference_template()
        if self.max_reference_tokens < 1:
            raise ValueError(f"max_reference_tokens must be >= 1, got {self.max_reference_tokens}.")
        if self.direct_sd_coef < 0:
            raise ValueError(f"direct_sd_coef must be >= 0, got {self.direct_sd_coef}.")
        if self.credit_token_chunk is not None and self.credit_token_chunk < 1:
            raise ValueError(f"credit_token_chunk must be >= 1 or None, got {self.credit_token_chunk}.")
        if self.credit_log_steps < 0:
            raise ValueError(f"credit_log_steps must be >= 0, got {self.credit_log_steps}.")
        if self.credit_batch_size is not None and self.credit_batch_size < 1:
            raise ValueError(f"credit_batch_size must be >= 1 or None, got {self.credit_batch_size}.")
        for name in ("segment_entropy_tolerance", "segment_min_divergence", "segment_noise_floor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.segment_max_tokens < 1:
            raise ValueError(f"segment_max_tokens must be >= 1, got {self.segment_max_tokens}.")
        if not 0 <= self.segment_saliency_floor <= 1:
            raise ValueError(f"segment_saliency_floor must be in [0, 1], got {self.segment_saliency_floor}.")
        if not 0 < self.segment_max_fraction <= 1:
            raise ValueError(f"segment_max_fraction must be in (0, 1], got {self.segment_max_fraction}.")
        if self.dynamic_sampling and self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"dynamic_sampling needs groups of at least 2 siblings to find mixed groups, got "
                f"num_generations={self.num_generations}."
            )
        super().__post_init__()

    def _check_numbers(self) -> None:
        """Every numeric SGCD field has its declared type (no bools, no strings) and a finite value."""
        grpo_fields = {f.name for f in fields(GRPOConfig)}
        for f in fields(self):
            if f.name in grpo_fields or not isinstance(f.type, str):
                continue
            kinds = f.type.replace(" ", "").split("|")
            if "float" not in kinds and "int" not in kinds:
                continue
            value = getattr(self, f.name)
            if value is None and "None" in kinds:
                continue
            allowed = (int, float) if "float" in kinds else (int,)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise TypeError(f"{f.name} must be {' or '.join(kinds)}, got {value!r} ({type(value).__name__}).")
            if not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}.")

    def _check_reference_template(self) -> None:
        """`reference_template` is a string whose replacement fields are all exactly `{reference}`."""
        template = self.reference_template
        if not isinstance(template, str):
            raise TypeError(f"reference_template must be str, got {template!r} ({type(template).__name__}).")
        if "{reference}" not in template:
            raise ValueError(f"reference_template must contain '{{reference}}', got {template!r}.")
        try:
            parsed = [
                (name, spec, conversion)
                for _, name, spec, conversion in Formatter().parse(template)
                if name is not None
            ]
            problem = "" if all(f == ("reference", "", None) for f in parsed) else "a field other than {reference}"
        except ValueError as exc:  # a single '{' or '}'
            problem = str(exc)
        if problem:
            raise ValueError(
                f"reference_template must be a format string whose only field is {{reference}} (double other "
                f"braces: '{{{{' and '}}}}'), got {template!r}: {problem}."
            )

    @property
    def credit_spec(self) -> CreditModeSpec:
        """The behaviour of `credit_mode` (`CREDIT_MODE_SPECS`)."""
        return CREDIT_MODE_SPECS[self.credit_mode]

    @property
    def segmenter_needs_batch(self) -> bool:
        """Segmenter options that need the whole batch's features (signed, group baselines): no fused student pass."""
        return self.segment_signed or self.segment_baseline != "rollout"

    @property
    def segmenter(self) -> SegmenterConfig:
        """The segmenter thresholds as a `SegmenterConfig`."""
        return SegmenterConfig(
            spike_z=self.segment_spike_z,
            entropy_tolerance=self.segment_entropy_tolerance,
            reset_z=self.segment_reset_z,
            max_span_tokens=self.segment_max_tokens,
            saliency_floor=self.segment_saliency_floor,
            max_selected_fraction=self.segment_max_fraction,
            min_spike_divergence=self.segment_min_divergence,
            noise_floor=self.segment_noise_floor,
            baseline=self.segment_baseline,
        )
