"""Teacher/student divergence on the teacher's top-K support (paper §4.3, Eq. 2).

Both distributions are restricted to a common support of size `K + 2`: the teacher's top-K tokens, the observed
(sampled) token, and one tail bucket holding the remaining probability mass of each distribution. Restricting to
this support keeps the cost at `O(K)` per token after the log-softmax and makes the divergence insensitive to the
long, noisy tail of a 150k-token vocabulary. With `K = V` the tail is empty and the result equals the full-vocabulary
divergence, which the tests check.

Everything here is detached: these are credit *features*, never a loss.
"""

from __future__ import annotations

from typing import Literal

import torch


Divergence = Literal["reverse_kl", "forward_kl", "jsd"]
DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")

_TINY = 1e-12


def project_to_support(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    observed_ids: torch.Tensor,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projects two full log-distributions onto the support `top-K(teacher) ∪ {observed} ∪ {tail}`.

    Args:
        student_logprobs: `(N, V)` student log-probabilities (log-softmax already applied).
        teacher_logprobs: `(N, V)` teacher log-probabilities.
        observed_ids: `(N,)` the sampled token at each position.
        top_k: number of teacher tokens kept (clamped to `V`).

    Returns:
        `(p, q, support_ids)`: `(N, K + 2)` probabilities of the student and teacher on the support (the last column is
        the tail bucket; a duplicate observed token has probability 0 in both) and the `(N, K + 1)` token ids.
    """
    support_ids, keep = teacher_support(teacher_logprobs, observed_ids, top_k)
    return (
        _on_support(student_logprobs, support_ids, keep),
        _on_support(teacher_logprobs, support_ids, keep),
        support_ids,
    )


def teacher_support(
    teacher_scores: torch.Tensor, observed_ids: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(N, K + 1)` support ids, the teacher's top-K tokens then the observed token, and the mask of entries that
    count (the observed token counts once when the teacher ranks it in its top-K).

    `teacher_scores` may be logits or log-probabilities (same ranking). The top-K come unsorted: every use of the
    support is a sum over it, and an unsorted `topk` is about 25% faster on CPU.
    """
    k = min(top_k, teacher_scores.size(-1))
    top_ids = teacher_scores.topk(k, dim=-1, sorted=False).indices  # (N, K)
    support_ids = torch.cat([top_ids, observed_ids.long().unsqueeze(-1)], dim=-1)  # (N, K + 1)
    return support_ids, support_keep(support_ids)


def with_tail_bucket(p: torch.Tensor) -> torch.Tensor:
    """Appends the tail bucket to `(N, K + 1)` support probabilities: the remaining mass, at least 0."""
    return torch.cat([p, (1.0 - p.sum(-1, keepdim=True)).clamp(min=0.0)], dim=-1)


def _on_support(logprobs: torch.Tensor, support_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`(N, K + 2)` probabilities on the support plus the tail bucket holding the remaining mass."""
    return with_tail_bucket(logprobs.gather(-1, support_ids).exp() * keep)


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`KL(a || b)` along the last dim for probability vectors, with `0 · log 0 = 0`."""
    return torch.where(a > 0, a * (torch.log(a.clamp(min=_TINY)) - torch.log(b.clamp(min=_TINY))), 0.0).sum(-1)


def support_divergence(p: torch.Tensor, q: torch.Tensor, divergence: Divergence = "reverse_kl") -> torch.Tensor:
    """Divergence between student `p` and teacher `q` on a shared support.

    `reverse_kl` is the paper's `KL(p_student || q_teacher)`; `forward_kl` is `KL(q || p)`; `jsd` is the
    Jensen-Shannon divergence `½ KL(p || m) + ½ KL(q || m)` with `m = (p + q) / 2`.
    """
    if divergence == "reverse_kl":
        return _kl(p, q)
    if divergence == "forward_kl":
        return _kl(q, p)
    if divergence == "jsd":
        m = 0.5 * (p + q)
        return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    raise ValueError(f"Unknown divergence {divergence!r}; expected one of {DIVERGENCES}.")


def support_entropy(q: torch.Tensor) -> torch.Tensor:
    """Entropy of a probability vector along the last dim (nats), with `0 · log 0 = 0`."""
    return -torch.where(q > 0, q * torch.log(q.clamp(min=_TINY)), 0.0).sum(-1)


@torch.no_grad()
def teacher_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    observed_ids: torch.Tensor,
    top_k: int = 100,
    divergence: Divergence = "reverse_kl",
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense credit features: per-token divergence `d_t` and teacher entropy `H_t` on the top-K support.

    Args:
        student_logits: `(..., V)` logits of the policy under the clean (student) prompt.
        teacher_logits: `(..., V)` logits of the *same* policy with the credit reference in context.
        observed_ids: `(...)` the sampled tokens.
        top_k: size of the teacher top-K support.
        divergence: `"reverse_kl"` (paper default), `"forward_kl"` or `"jsd"`.
        temperature: sampling temperature; logits are divided by it, as TRL does for its log-probabilities.
        chunk_size: positions processed at once, so the float32 log-softmax of both distributions never exceeds
            `2 · chunk_size · V` floats (150 MB per tensor for a 150k vocabulary at the default).

    Returns:
        `(d, H)`, both of shape `(...)`, float32, detached.
    """
    shape = observed_ids.shape
    vocab = student_logits.size(-1)
    student_logits = student_logits.reshape(-1, vocab)
    teacher_logits = teacher_logits.reshape(-1, vocab)
    observed_ids = observed_ids.reshape(-1)
    d_parts, h_parts = [], []
    for start in range(0, observed_ids.numel(), chunk_size):
        end = start + chunk_size
        s = torch.log_softmax(student_logits[start:end].float() / temperature, dim=-1)
        t = torch.log_softmax(teacher_logits[start:end].float() / temperature, dim=-1)
        p, q, _ = project_to_support(s, t, observed_ids[start:end], top_k)
        d_parts.append(support_divergence(p, q, divergence))
        h_parts.append(support_entropy(q))
    if not d_parts:
        empty = torch.zeros(shape, dtype=torch.float32, device=observed_ids.device)
        return empty, empty.clone()
    return torch.cat(d_parts).reshape(shape), torch.cat(h_parts).reshape(shape)


def support_keep(support_ids: torch.Tensor) -> torch.Tensor:
    """`(…, K+1)` mask of the support entries counted once: the observed token (last column) is dropped when the
    teacher already ranks it in its top-K."""
    keep = torch.ones_like(support_ids, dtype=torch.bool)
    keep[..., -1] = ~(support_ids[..., :-1] == support_ids[..., -1:]).any(dim=-1)
    return keep


@torch.no_grad()
def observed_anchored_divergence(
    student_support_logits: torch.Tensor,
    student_observed_logprobs: torch.Tensor,
    support_ids: torch.Tensor,
    teacher_q: torch.Tensor,
    divergence: Divergence = "reverse_kl",
    temperature: float = 1.0,
) -> torch.Tensor:
    """The divergence of `teacher_divergence`, from the student's logits on the support alone.

    The student's log-normaliser is recovered from the log-probability of the observed token (the support's last
    column), which TRL's fused LM head already returns for the loss: `log p_j = log p_obs + (z_j - z_obs) / τ`. So
    the student side needs `K + 1` dot products per position instead of a full-vocabulary projection and
    log-softmax.

    Args:
        student_support_logits: `(N, K + 1)` student logits at `support_ids`.
        student_observed_logprobs: `(N,)` student log-probability of the observed token at temperature `τ`.
        support_ids: `(N, K + 1)` teacher top-K ids and the observed id (from `teacher_topk`).
        teacher_q: `(N, K + 2)` teacher probabilities on the support and tail (from `teacher_topk`).
    """
    z = student_support_logits.float()
    logp = student_observed_logprobs.float().unsqueeze(-1) + (z - z[..., -1:]) / temperature
    p = logp.exp() * support_keep(support_ids)
    p = with_tail_bucket(p)
    return support_divergence(p, teacher_q.float(), divergence)


def teacher_topk(
    teacher_logits: torch.Tensor, observed_ids: torch.Tensor, top_k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher support and probabilities, stored for the `direct_sd` baseline's auxiliary loss.

    Returns `(support_ids (…, K+1), q (…, K+2), keep (…, K+1))` where `keep` marks non-duplicate support entries.
    """
    vocab = teacher_logits.size(-1)
    shape = observed_ids.shape
    t = torch.log_softmax(teacher_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    support_ids, keep = teacher_support(t, observed_ids.reshape(-1), top_k)
    q = _on_support(t, support_ids, keep)
    keep = q[:, :-1] > 0
    return (
        support_ids.reshape(*shape, -1),
        q.reshape(*shape, -1),
        keep.reshape(*shape, -1),
    )


def student_support_divergence(
    student_logits: torch.Tensor,
    support_ids: torch.Tensor,
    teacher_q: torch.Tensor,
    keep: torch.Tensor,
    divergence: Divergence = "reverse_kl",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Differentiable divergence of the student against a stored, detached teacher support distribution.

    This is the *direct self-distillation* objective the paper shows collapsing tool use; SGCD never uses it. It
    exists only for the `direct_sd` ablation.
    """
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    p = s.gather(-1, support_ids).exp() * keep
    p = with_tail_bucket(p)
    return support_divergence(p, teacher_q.detach(), divergence)
