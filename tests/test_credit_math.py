"""Unit tests of the pure credit pipeline: divergence, segmenter, bounded weights (paper §4.3-4.5, App. A)."""

import itertools

import pytest
import torch

from trl_sgcd.credit import (
    DIVERGENCES,
    SegmenterConfig,
    credit_advantages,
    credit_weights,
    observed_anchored_divergence,
    project_to_support,
    saliency_segments,
    student_support_divergence,
    support_divergence,
    support_entropy,
    teacher_divergence,
    teacher_topk,
    uniform_weights,
)


def _brute_force(student_logits, teacher_logits, observed, k, kind):
    """Reference implementation: build the coarse-grained distributions token by token with Python sets."""
    p_full = torch.softmax(student_logits.double(), -1)
    q_full = torch.softmax(teacher_logits.double(), -1)
    d_out, h_out = [], []
    for n in range(p_full.size(0)):
        top = set(torch.topk(q_full[n], k).indices.tolist())
        support = sorted(top | {int(observed[n])})
        p = [p_full[n, v].item() for v in support]
        q = [q_full[n, v].item() for v in support]
        p.append(max(0.0, 1 - sum(p)))
        q.append(max(0.0, 1 - sum(q)))

        def kl(a, b):
            return sum(
                x * (torch.log(torch.tensor(x)) - torch.log(torch.tensor(max(y, 1e-12)))).item()
                for x, y in zip(a, b, strict=True)
                if x > 0
            )

        if kind == "reverse_kl":
            d = kl(p, q)
        elif kind == "forward_kl":
            d = kl(q, p)
        else:
            m = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
            d = 0.5 * kl(p, m) + 0.5 * kl(q, m)
        d_out.append(d)
        h_out.append(-sum(x * torch.log(torch.tensor(x)).item() for x in q if x > 0))
    return torch.tensor(d_out, dtype=torch.float64), torch.tensor(h_out, dtype=torch.float64)


@pytest.mark.parametrize("kind,k", itertools.product(["reverse_kl", "forward_kl", "jsd"], [1, 3, 7]))
def test_divergence_matches_brute_force_on_small_vocab(kind, k):
    torch.manual_seed(0)
    vocab = 11
    student = torch.randn(32, vocab) * 2
    teacher = torch.randn(32, vocab) * 2
    observed = torch.randint(0, vocab, (32,))
    d, h = teacher_divergence(student, teacher, observed, top_k=k, divergence=kind)
    d_ref, h_ref = _brute_force(student, teacher, observed, k, kind)
    torch.testing.assert_close(d.double(), d_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(h.double(), h_ref, atol=2e-5, rtol=1e-4)


def test_full_support_equals_full_vocabulary_divergence():
    torch.manual_seed(1)
    vocab = 9
    student, teacher = torch.randn(5, vocab), torch.randn(5, vocab)
    observed = torch.randint(0, vocab, (5,))
    d, h = teacher_divergence(student, teacher, observed, top_k=vocab, divergence="reverse_kl")
    p, q = torch.softmax(student, -1), torch.softmax(teacher, -1)
    full_kl = (p * (p.log() - q.log())).sum(-1)
    torch.testing.assert_close(d, full_kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, -(q * q.log()).sum(-1), atol=1e-5, rtol=1e-5)


def test_support_holds_observed_token_once_and_sums_to_one():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0, -2.0]])
    logp = torch.log_softmax(logits, -1)
    p, q, ids = project_to_support(logp, logp, torch.tensor([0]), top_k=2)  # observed already in the top-2
    assert ids.tolist() == [[0, 1, 0]]
    assert p[0, 2] == 0  # the duplicate observed entry carries no mass
    torch.testing.assert_close(p.sum(-1), torch.ones(1))
    p, q, ids = project_to_support(logp, logp, torch.tensor([4]), top_k=2)  # observed outside the top-2
    assert ids.tolist() == [[0, 1, 4]]
    assert p[0, 2] > 0
    torch.testing.assert_close(q.sum(-1), torch.ones(1))


def test_identical_contexts_give_zero_divergence_and_jsd_is_bounded():
    logits = torch.randn(4, 50)
    observed = torch.randint(0, 50, (4,))
    for kind in ("reverse_kl", "forward_kl", "jsd"):
        d, _ = teacher_divergence(logits, logits.clone(), observed, top_k=10, divergence=kind)
        assert torch.allclose(d, torch.zeros(4), atol=1e-6)
    d, _ = teacher_divergence(
        torch.randn(64, 50) * 10,
        torch.randn(64, 50) * 10,
        torch.zeros(64, dtype=torch.long),
        top_k=10,
        divergence="jsd",
    )
    assert (d >= 0).all() and (d <= torch.log(torch.tensor(2.0)) + 1e-6).all()
    with pytest.raises(ValueError, match="Unknown divergence"):
        support_divergence(torch.ones(1, 2) / 2, torch.ones(1, 2) / 2, "kl")
    assert support_entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0


def test_divergence_is_detached_even_from_grad_inputs():
    student = torch.randn(3, 8, requires_grad=True)
    teacher = torch.randn(3, 8, requires_grad=True)
    d, h = teacher_divergence(student, teacher, torch.tensor([1, 2, 3]), top_k=4)
    assert not d.requires_grad and not h.requires_grad


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_observed_anchored_divergence_equals_the_full_student_pass(kind, temperature):
    """The fused student side (logits on the support + the observed token's log-probability) is the same divergence."""
    torch.manual_seed(3)
    student, teacher = torch.randn(64, 300) * 3, torch.randn(64, 300) * 3
    observed = torch.randint(0, 300, (64,))
    observed[:16] = teacher[:16].argmax(-1)  # the observed token inside the teacher's top-K: counted once
    expected, entropy = teacher_divergence(
        student, teacher, observed, top_k=20, divergence=kind, temperature=temperature
    )
    ids, q, _ = teacher_topk(teacher, observed, 20, temperature)
    observed_logp = torch.log_softmax(student / temperature, -1).gather(-1, observed[:, None]).squeeze(-1)
    fused = observed_anchored_divergence(student.gather(-1, ids), observed_logp, ids, q, kind, temperature)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(support_entropy(q), entropy)
    assert expected.abs().sum() > 0


def test_direct_sd_auxiliary_has_gradient_and_matches_feature():
    torch.manual_seed(2)
    student = torch.randn(6, 12, requires_grad=True)
    teacher = torch.randn(6, 12)
    observed = torch.randint(0, 12, (6,))
    ids, q, keep = teacher_topk(teacher, observed, top_k=4)
    aux = student_support_divergence(student, ids, q, keep)
    d, _ = teacher_divergence(student.detach(), teacher, observed, top_k=4)
    torch.testing.assert_close(aux.detach(), d, atol=1e-5, rtol=1e-5)
    aux.sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


# ---------------------------------------------------------------- segmenter


def _trace(values):
    return torch.tensor([values], dtype=torch.float32)


def test_segmenter_marks_a_spike_and_grows_the_span_while_entropy_is_stable():
    d = _trace([0.01] * 10 + [1.0, 0.8, 0.7] + [0.01] * 10)
    h = _trace([1.0] * 23)
    s, spans = saliency_segments(d, h, torch.ones_like(d, dtype=torch.bool), SegmenterConfig(max_selected_fraction=1))
    assert [(sp.start, sp.end) for sp in spans] == [(10, 12)]
    assert (s[0, :10] == 0).all() and (s[0, 13:] == 0).all()
    assert s[0, 10] == pytest.approx(1.0, abs=0.05) and (s[0, 10:13] >= 0.5).all()


def test_segmenter_entropy_rise_terminates_the_span():
    d = _trace([0.01] * 10 + [1.0, 0.9, 0.9, 0.9] + [0.01] * 10)
    h = _trace([1.0] * 12 + [2.0] * 12)  # entropy jumps by 1 nat at t = 12
    _, spans = saliency_segments(d, h, torch.ones_like(d, dtype=torch.bool), SegmenterConfig(max_selected_fraction=1))
    # The first span stops at the entropy rise; the still-divergent token at t = 12 starts a new span of its own.
    assert [(sp.start, sp.end) for sp in spans] == [(10, 11), (12, 13)]
    flat = torch.ones_like(h)
    _, spans = saliency_segments(
        d, flat, torch.ones_like(d, dtype=torch.bool), SegmenterConfig(max_selected_fraction=1)
    )
    assert [(sp.start, sp.end) for sp in spans] == [(10, 13)]


def test_segmenter_divergence_reset_terminates_the_span():
    d = _trace([0.01] * 10 + [1.0, 0.9, 0.01, 0.3] + [0.01] * 10)
    h = _trace([1.0] * 24)
    cfg = SegmenterConfig(max_selected_fraction=1)
    _, spans = saliency_segments(d, h, torch.ones_like(d, dtype=torch.bool), cfg)
    assert [(sp.start, sp.end) for sp in spans] == [(10, 11)]  # the reset at t = 12 ends it; 0.3 is no spike


def test_segmenter_respects_max_span_and_selected_fraction_cap():
    d = _trace([0.01] * 20 + [1.0] * 30 + [0.01] * 50)
    h = _trace([1.0] * 100)
    cfg = SegmenterConfig(max_span_tokens=8, max_selected_fraction=1.0, spike_z=1.0)
    _, spans = saliency_segments(d, h, torch.ones_like(d, dtype=torch.bool), cfg)
    assert all(len(sp) <= 8 for sp in spans)
    cfg = SegmenterConfig(max_span_tokens=8, max_selected_fraction=0.1, spike_z=1.0)
    s, spans = saliency_segments(d, h, torch.ones_like(d, dtype=torch.bool), cfg)
    assert (s > 0).sum() <= 10


def test_segmenter_ignores_masked_positions_and_flat_traces():
    d = _trace([0.01] * 10 + [5.0] + [0.01] * 10)
    h = _trace([1.0] * 21)
    mask = torch.ones_like(d, dtype=torch.bool)
    mask[0, 10] = False  # the spike sits on a tool-observation token
    s, spans = saliency_segments(d, h, mask, SegmenterConfig(max_selected_fraction=1))
    assert spans == [] and s.abs().sum() == 0
    s, spans = saliency_segments(torch.zeros(2, 30), torch.ones(2, 30), torch.ones(2, 30, dtype=torch.bool))
    assert spans == [] and s.abs().sum() == 0


# ---------------------------------------------------------------- weights (App. A)


def test_credit_weights_are_bounded_detached_and_recover_grpo_at_zero_saliency():
    s = torch.rand(4, 16, requires_grad=True) * 1.5  # includes s > 1 so the cap binds
    w = credit_weights(s, gamma=1.0, cap=2.0)
    assert not w.requires_grad  # ∂W/∂θ = 0
    assert (w >= 1).all() and (w <= 2).all()
    assert torch.equal(credit_weights(torch.zeros(3, 5)), torch.ones(3, 5))
    assert torch.equal(credit_weights(torch.rand(3, 5), gamma=0.0), torch.ones(3, 5))


def test_credit_advantages_keep_sign_and_bound():
    torch.manual_seed(3)
    a = torch.randn(64)
    w = credit_weights(torch.rand(64, 20) * 2, gamma=1.7, cap=2.5)
    adv = credit_advantages(a, w)
    assert adv.shape == (64, 20)
    nonzero = a != 0
    assert (torch.sign(adv[nonzero]) == torch.sign(a[nonzero]).unsqueeze(1)).all()  # sign(Â) = sign(A)
    assert (adv.abs() <= 2.5 * a.abs().unsqueeze(1) + 1e-7).all()  # |Â| ≤ c|A|
    assert (adv.abs() >= a.abs().unsqueeze(1) - 1e-7).all()  # W ≥ 1


def test_uniform_weights_keep_advantage_mass_but_remove_localisation():
    w = torch.tensor([[1.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    u = uniform_weights(w, mask)
    torch.testing.assert_close(u[0, :3], torch.full((3,), 4.0 / 3))
    assert u[0, 3] == 1 and torch.equal(u[1], torch.ones(4))
    torch.testing.assert_close((u * mask).sum(), (w * mask).sum())


def test_chunked_divergence_equals_unchunked():
    torch.manual_seed(4)
    student, teacher = torch.randn(37, 60), torch.randn(37, 60)
    observed = torch.randint(0, 60, (37,))
    d1, h1 = teacher_divergence(student, teacher, observed, top_k=8, chunk_size=5)
    d2, h2 = teacher_divergence(student, teacher, observed, top_k=8, chunk_size=1000)
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(h1, h2)
    d0, h0 = teacher_divergence(torch.randn(0, 60), torch.randn(0, 60), torch.zeros(0, dtype=torch.long))
    assert d0.shape == (0,) and h0.shape == (0,)
