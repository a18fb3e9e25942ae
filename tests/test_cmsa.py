"""CMSA and InfoNCE against step-by-step numpy computations of their formulas."""

import numpy as np
import pytest
import torch

from sda_lib.method.cmsa import Temperature, cmsa_loss, infonce_loss
from sda_lib.method.cmsa import group_mean as group_mean_torch


def softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def group_mean(x, d):
    """The authors' hard-coded 3584 -> 768 split, generalised: (d - wide) groups of q, then wide of q + 1."""
    width = x.shape[1]
    if width <= d:
        return x
    q, wide = divmod(width, d)
    sizes = [q] * (d - wide) + [q + 1] * wide
    bounds = np.cumsum([0] + sizes)
    return np.stack([x[:, a:b].mean(axis=1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)


def numpy_cmsa(et, ev, tau, form, d=768):
    """Each form term by term, with T the row softmax of the teacher logits."""
    if form == "stable":
        et, ev = unit(et), unit(ev)
    else:
        et, ev = group_mean(et, d), group_mean(ev, d)
    n = len(et)
    s = et @ ev.T / tau
    teacher_logits = tau / 2 * (et @ et.T + ev @ ev.T)
    t = softmax(teacher_logits, axis=1)  # T[i, j] = softmax over j
    t_cols = softmax(teacher_logits, axis=0)  # column softmax: T'[j, i] = softmax over j
    p = softmax(s, axis=1)  # text row i over images
    q = softmax(s.T, axis=1)  # image row i over texts
    total = 0.0
    for i in range(n):
        for j in range(n):
            if form == "authors":  # image rows against T, text rows against T transposed
                total -= t[i, j] * np.log(q[i, j]) + t[j, i] * np.log(p[i, j])
            elif form == "paper":  # KL(T_i,: || P_i,:) + KL(T_:,i || Q_i,:), T_:,i as printed
                total += t[i, j] * np.log(t[i, j] / p[i, j]) + t[j, i] * np.log(t[j, i] / q[i, j])
            else:
                total += t[i, j] * np.log(t[i, j] / p[i, j]) + t_cols[j, i] * np.log(t_cols[j, i] / q[i, j])
    return total / (2 * n)


def numpy_student_grad(et, ev, tau):
    """ "stable" without its normalisation: dL/de_t, dL/de_v and dL/dτ with the teacher held
    constant: dL/dS = (P - T_rows + Qᵀ - T_cols) / 2N, and S = e_t e_vᵀ / τ."""
    n = len(et)
    s = et @ ev.T / tau
    teacher_logits = tau / 2 * (et @ et.T + ev @ ev.T)
    d_s = (softmax(s, 1) - softmax(teacher_logits, 1) + softmax(s.T, 1).T - softmax(teacher_logits, 0)) / (2 * n)
    return d_s @ ev / tau, d_s.T @ et / tau, float((d_s * -s / tau).sum())


EXAMPLES = [
    (np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[0.8, 0.6], [0.0, 1.0]]), 0.5),
    (np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]]), np.array([[2.0, 1.0], [0.0, 1.0], [1.0, -1.0]]), 3.0),
]
FORMS = ("authors", "paper", "stable")


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
@pytest.mark.parametrize("form", FORMS)
def test_cmsa_matches_hand_computation(et, ev, tau, form):
    got = cmsa_loss(t64(et), t64(ev), tau, form)
    assert got.item() == pytest.approx(numpy_cmsa(et, ev, tau, form), rel=1e-10)


def test_forms_differ_where_they_should():
    et, ev, tau = EXAMPLES[1]
    losses = {form: numpy_cmsa(et, ev, tau, form) for form in FORMS}
    assert len({round(v, 8) for v in losses.values()}) == 3
    # authors' cross-entropy = the paper's KL + the teacher's (row and transposed) entropy terms
    e_t, e_v = et, ev
    t = softmax(tau / 2 * (e_t @ e_t.T + e_v @ e_v.T), axis=1)
    entropy = -(t * np.log(t)).sum() - (t.T * np.log(t.T)).sum()
    mirrored = numpy_cmsa(ev, et, tau, "paper")  # the authors' roles of S and Sᵀ are swapped
    assert losses["authors"] == pytest.approx(mirrored + entropy / (2 * len(et)), rel=1e-10)


def test_group_mean_is_the_authors_split():
    x = torch.arange(2 * 3584, dtype=torch.float64).reshape(2, 3584)
    got = group_mean_torch(x)
    assert got.shape == (2, 768)
    assert got[0, 0].item() == pytest.approx(np.mean([0, 1, 2, 3]))  # dims 0..1023 in groups of 4
    assert got[0, 255].item() == pytest.approx(np.mean([1020, 1021, 1022, 1023]))
    assert got[0, 256].item() == pytest.approx(np.mean([1024, 1025, 1026, 1027, 1028]))  # then groups of 5
    assert got[1, 767].item() == pytest.approx(3584 + np.mean([3579, 3580, 3581, 3582, 3583]))
    np.testing.assert_allclose(got.numpy(), group_mean(x.numpy(), 768))
    narrow = torch.randn(3, 64)
    assert group_mean_torch(narrow) is narrow  # the presets' widths pass unchanged
    wide = np.random.default_rng(0).normal(size=(4, 1000))
    np.testing.assert_allclose(group_mean_torch(t64(wide), 7).numpy(), group_mean(wide, 7))


def test_projection_enters_the_authors_and_paper_forms():
    rng = np.random.default_rng(3)
    et, ev = rng.normal(size=(4, 1600)) * 0.05, rng.normal(size=(4, 1600)) * 0.05
    for form in ("authors", "paper"):
        assert cmsa_loss(t64(et), t64(ev), 3.0, form).item() == pytest.approx(numpy_cmsa(et, ev, 3.0, form), rel=1e-9)


def test_cmsa_non_negative_and_positive_off_target():
    g = torch.Generator().manual_seed(0)
    for tau in (0.05, 1.0, 3.0):
        e_t, e_v = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
        assert cmsa_loss(e_t, e_v, tau, "stable").item() > 0


def test_stable_zero_when_student_equals_teacher():
    # e_t = e_v and τ = 1: S = e eᵀ and the teacher logits 1/2 (e eᵀ + e eᵀ) are the same matrix.
    e = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert cmsa_loss(e, e, 1.0, "stable").item() == pytest.approx(0.0, abs=1e-12)
    assert cmsa_loss(e, e, 2.0, "stable").item() > 1e-3  # same embeddings, other τ: student ≠ teacher


def _numeric_grad(f, x, eps=1e-6):
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        out[idx] = (f(up) - f(down)) / (2 * eps)
    return out


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
@pytest.mark.parametrize("form", ["authors", "paper"])
def test_teacher_in_the_graph_gives_the_full_derivative(et, ev, tau, form):
    """The authors' and the printed forms differentiate through the teacher too: autograd equals
    finite differences of the numpy transcription, for e_t, e_v and τ."""
    e_t, e_v = t64(et).requires_grad_(), t64(ev).requires_grad_()
    tau_t = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
    cmsa_loss(e_t, e_v, tau_t, form).backward()
    np.testing.assert_allclose(
        e_t.grad.numpy(), _numeric_grad(lambda x: numpy_cmsa(x, ev, tau, form), et), rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(
        e_v.grad.numpy(), _numeric_grad(lambda x: numpy_cmsa(et, x, tau, form), ev), rtol=1e-5, atol=1e-8
    )
    numeric_tau = (numpy_cmsa(et, ev, tau + 1e-6, form) - numpy_cmsa(et, ev, tau - 1e-6, form)) / 2e-6
    assert tau_t.grad.item() == pytest.approx(numeric_tau, rel=1e-5)
    assert not np.allclose(e_t.grad.numpy(), numpy_student_grad(et, ev, tau)[0], atol=1e-6)


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
def test_stable_detached_teacher_gives_student_only_gradient(et, ev, tau):
    """With the normalisation folded in by finite differences of the numpy transcription, and
    without it by the closed form of the student-only gradient."""
    e_t, e_v = t64(et).requires_grad_(), t64(ev).requires_grad_()
    log_tau = torch.tensor(np.log(tau), dtype=torch.float64, requires_grad=True)
    cmsa_loss(e_t, e_v, log_tau.exp(), "stable").backward()
    a, b = unit(et), unit(ev)
    # d unit(x)/dx applied to the student gradient at the unit vectors
    g_a, g_b, g_tau = numpy_student_grad(a, b, tau)

    def project(x, g):
        return (g - (g * unit(x)).sum(1, keepdims=True) * unit(x)) / np.linalg.norm(x, axis=1, keepdims=True)

    np.testing.assert_allclose(e_t.grad.numpy(), project(et, g_a), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(e_v.grad.numpy(), project(ev, g_b), rtol=1e-8, atol=1e-12)
    assert log_tau.grad.item() == pytest.approx(tau * g_tau, rel=1e-8)


@pytest.mark.parametrize("et, ev, tau", EXAMPLES)
def test_infonce_matches_hand_computation(et, ev, tau):
    a, b = unit(et), unit(ev)
    s = a @ b.T / tau
    n = len(s)
    ce = lambda m: np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(n)])  # noqa: E731
    got = infonce_loss(t64(et), t64(ev), tau)
    assert got.item() == pytest.approx((ce(s) + ce(s.T)) / 2, rel=1e-10)


def test_infonce_projects_before_it_normalises_as_the_authors_call_it():
    """At the 7B's width the authors' InfoNCE_Loss gets the group-mean projection (3584 -> 768) and
    normalises that, not the raw pooled states."""
    rng = np.random.default_rng(5)
    smooth = np.repeat(rng.normal(size=(4, 896)), 4, axis=1)  # constant within groups of 4 features
    wiggle = rng.normal(size=(4, 3584)) * np.where(np.arange(3584) % 2, 3.0, -3.0)  # mostly averaged away
    et, ev = smooth + wiggle, smooth - wiggle
    ce = lambda m: np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(len(m))])  # noqa: E731

    def loss(a, b):
        s = unit(a) @ unit(b).T / 0.1
        return (ce(s) + ce(s.T)) / 2

    projected = loss(group_mean(et, 768), group_mean(ev, 768))
    assert infonce_loss(t64(et), t64(ev), 0.1).item() == pytest.approx(projected, rel=1e-10)
    assert infonce_loss(t64(et), t64(ev), 0.1, project=False).item() == pytest.approx(loss(et, ev), rel=1e-10)
    assert projected < loss(et, ev) - 1  # the matched pairs agree once the group means are taken


def test_temperature_learnable_positive_and_receives_gradient():
    plain = Temperature()  # the authors' plain parameter
    assert plain().item() == 3.0 and plain.value.item() == 3.0
    tau = Temperature(log_space=True)
    assert tau().item() == pytest.approx(3.0)
    e = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    cmsa_loss(e, torch.randn(4, 3), tau(), "stable").backward()
    assert tau.value.grad is not None and tau.value.grad.abs().item() > 0
    with torch.no_grad():
        tau.value -= 100  # any log value still gives a positive τ
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
    with pytest.raises(ValueError, match="CMSA form must be one of authors, paper, stable, got 'kl'"):
        cmsa_loss(torch.randn(3, 2), torch.randn(3, 2), 1.0, "kl")
