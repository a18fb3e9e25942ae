"""CMSA and InfoNCE against step-by-step numpy computations of their formulas."""

import numpy as np
import pytest
import torch

from sda_lib.cmsa import Temperature, cmsa_loss, infonce_loss


def softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def numpy_cmsa(et, ev, tau, normalize=True):
    """L = 1/(2N) Σ_i [KL(T_i,: ‖ softmax(S)_i,:) + KL(T_:,i ‖ softmax(Sᵀ)_i,:)], term by term."""
    if normalize:
        et, ev = unit(et), unit(ev)
    n = len(et)
    s = et @ ev.T / tau
    teacher_logits = tau / 2 * (et @ et.T + ev @ ev.T)
    t_rows = softmax(teacher_logits, axis=1)  # T[i, j] = softmax over j
    t_cols = softmax(teacher_logits, axis=0)  # T[j, i] = softmax over j (column i)
    p = softmax(s, axis=1)
    q = softmax(s.T, axis=1)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += t_rows[i, j] * np.log(t_rows[i, j] / p[i, j])
            total += t_cols[j, i] * np.log(t_cols[j, i] / q[i, j])
    return total / (2 * n)


def numpy_student_grad(et, ev, tau):
    """dL/de_t, dL/de_v and dL/dτ with the teacher held constant (no normalisation):
    dL/dS = (P - T_rows + Qᵀ - T_cols) / 2N, and S = e_t e_vᵀ / τ."""
    n = len(et)
    s = et @ ev.T / tau
    teacher_logits = tau / 2 * (et @ et.T + ev @ ev.T)
    d_s = (softmax(s, 1) - softmax(teacher_logits, 1) + softmax(s.T, 1).T - softmax(teacher_logits, 0)) / (2 * n)
    return d_s @ ev / tau, d_s.T @ et / tau, float((d_s * -s / tau).sum())


EXAMPLES = [
    (np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[0.8, 0.6], [0.0, 1.0]]), 0.5),
    (np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]]), np.array([[2.0, 1.0], [0.0, 1.0], [1.0, -1.0]]), 3.0),
]


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
@pytest.mark.parametrize("normalize", [True, False])
def test_cmsa_matches_hand_computation(et, ev, tau, normalize):
    got = cmsa_loss(t64(et), t64(ev), tau, normalize=normalize)
    assert got.item() == pytest.approx(numpy_cmsa(et, ev, tau, normalize), rel=1e-10)


def test_cmsa_non_negative_and_positive_off_target():
    g = torch.Generator().manual_seed(0)
    for tau in (0.05, 1.0, 3.0):
        e_t, e_v = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
        assert cmsa_loss(e_t, e_v, tau).item() > 0


def test_cmsa_zero_when_student_equals_teacher():
    # e_t = e_v and τ = 1: S = e eᵀ and the teacher logits 1/2 (e eᵀ + e eᵀ) are the same matrix.
    e = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert cmsa_loss(e, e, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert cmsa_loss(e, e, 2.0).item() > 1e-3  # same embeddings, other τ: student ≠ teacher


def _grads(et, ev, tau, detach_teacher):
    e_t, e_v = t64(et).requires_grad_(), t64(ev).requires_grad_()
    log_tau = torch.tensor(np.log(tau), dtype=torch.float64, requires_grad=True)
    cmsa_loss(e_t, e_v, log_tau.exp(), normalize=False, detach_teacher=detach_teacher).backward()
    return e_t.grad.numpy(), e_v.grad.numpy(), log_tau.grad.item()


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
def test_detached_teacher_gives_student_only_gradient(et, ev, tau):
    g_t, g_v, g_log_tau = _grads(et, ev, tau, detach_teacher=True)
    want_t, want_v, want_tau = numpy_student_grad(et, ev, tau)
    np.testing.assert_allclose(g_t, want_t, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(g_v, want_v, rtol=1e-8, atol=1e-12)
    assert g_log_tau == pytest.approx(tau * want_tau, rel=1e-8)


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
def test_attached_teacher_gradient_is_the_full_derivative(et, ev, tau):
    g_t, _, _ = _grads(et, ev, tau, detach_teacher=False)
    eps = 1e-6
    numeric = np.zeros_like(et)
    for idx in np.ndindex(et.shape):
        up, down = et.copy(), et.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (numpy_cmsa(up, ev, tau, False) - numpy_cmsa(down, ev, tau, False)) / (2 * eps)
    np.testing.assert_allclose(g_t, numeric, rtol=1e-5, atol=1e-8)
    assert not np.allclose(numeric, numpy_student_grad(et, ev, tau)[0], atol=1e-6)


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
def test_infonce_matches_hand_computation(et, ev, tau):
    a, b = unit(et), unit(ev)
    s = a @ b.T / tau
    n = len(s)
    ce = lambda m: np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(n)])  # noqa: E731
    got = infonce_loss(t64(et), t64(ev), tau)
    assert got.item() == pytest.approx((ce(s) + ce(s.T)) / 2, rel=1e-10)


def test_temperature_learnable_positive_and_receives_gradient():
    tau = Temperature()
    assert tau().item() == pytest.approx(3.0)
    e = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    cmsa_loss(e, torch.randn(4, 3), tau()).backward()
    assert tau.log_tau.grad is not None and tau.log_tau.grad.abs().item() > 0
    with torch.no_grad():
        tau.log_tau -= 100  # any log value still gives a positive τ
    assert tau().item() > 0
    fixed = Temperature(0.07, learnable=False)
    assert list(fixed.parameters()) == [] and fixed().item() == pytest.approx(0.07)
    with pytest.raises(ValueError, match="> 0"):
        Temperature(0.0)


def test_non_finite_loss_raises_with_value_and_tau():
    e_t = torch.randn(3, 2)
    e_t[1, 0] = float("nan")
    for loss in (cmsa_loss, infonce_loss):
        with pytest.raises(FloatingPointError, match=r"nan at tau=0\.5"):
            loss(e_t, torch.randn(3, 2), 0.5)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(4, 2\)"):
        cmsa_loss(torch.randn(3, 2), torch.randn(4, 2), 1.0)
