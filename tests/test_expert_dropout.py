"""MoDA's per-expert dropout kept lean (sda_lib.method.expert_dropout): the masks, outputs and gradients of
the loop over experts it replaced (conftest.todays_project_down), under the same seed, in float32
and bf16, compiled and eager, for a fraction of what that loop keeps for backward."""

import pytest
import torch
from torch import nn

from sda_lib.method import expert_dropout
from sda_lib.method.expert_dropout import ExpertDropoutDown, expert_keep, expert_keep_bits
from sda_lib.method.memory import saved_for_backward
from sda_lib.method.moda import IMAGE, TEXT, MoDAConfig, MoDALinear, MoDAState


def drawn_masks(experts, shape, p):
    """The masks as the per-expert path drew them: the uniforms compared, one boolean per expert."""
    n, cut = experts * torch.Size(shape).numel(), round(p * 65536)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    return draws.view(torch.int16)[:n].view(experts, *shape) >= cut - 32768


@pytest.mark.parametrize("experts, shape", [(3, (500, 401)), (8, (4, 7, 33)), (10, (6, 5))])
def test_packed_bits_are_the_drawn_masks(experts, shape):
    """One bit per expert (two bytes for ten experts), the same masks from the same generator
    state, which is left where drawing the masks left it."""
    torch.manual_seed(1)
    want, after = drawn_masks(experts, shape, 0.1), torch.rand(3)
    torch.manual_seed(1)
    bits, scale = expert_keep_bits(experts, torch.empty(shape), 0.1)
    assert bits.dtype == torch.uint8 and bits.shape == ((experts + 7) // 8, *shape)
    assert torch.equal(torch.stack([expert_keep(bits, i, torch.bool) for i in range(experts)]), want)
    assert torch.equal(torch.rand(3), after)
    assert scale == 65536 / (65536 - 6554)  # p rounded to 6554 / 65536


def test_keep_masks_are_independent_inverted_dropout():
    """Each expert keeps a share 1 - p of entries with the scale that keeps the mean (p = 0.25 is
    exact in 1/65536 steps), and two experts' masks agree only as independent draws do."""
    torch.manual_seed(0)
    bits, scale = expert_keep_bits(3, torch.zeros(500, 401), 0.25)  # odd size: the last draw is cut
    keep = torch.stack([expert_keep(bits, i, torch.float32) for i in range(3)])
    assert scale == 4 / 3
    for m in keep:
        assert m.mean().item() == pytest.approx(0.75, abs=0.005)
    assert (keep[0] == keep[1]).float().mean().item() == pytest.approx(0.75**2 + 0.25**2, abs=0.005)


def test_projection_is_each_expert_on_its_own_masked_input(monkeypatch):
    """By hand: expert i's block of the down-projection is A_i (x * keep_i / (1 - p))."""
    config = MoDAConfig(r=8, num_experts=4, dropout=0.3)
    layer = MoDALinear(nn.Linear(16, 8), config, MoDAState(config), "x").train()
    x = torch.randn(2, 5, 16)
    keep = torch.rand(4, 2, 5, 16) > 0.3
    bits = sum(keep[i].to(torch.uint8) << i for i in range(4))[None]
    monkeypatch.setattr("sda_lib.method.moda.expert_keep_bits", lambda *a: (bits, 1 / 0.7))
    a = layer.lora_A.detach().split(layer.expert_rank)
    want = torch.cat([(x * keep[i] / 0.7) @ a[i].T for i in range(4)], dim=-1)
    torch.testing.assert_close(layer._project_down(x), want, rtol=1e-6, atol=1e-6)


def probe_layer(dtype, experts=8, routing="soft"):
    config = MoDAConfig(r=8, num_experts=experts, dropout=0.1, routing=routing)
    torch.manual_seed(0)
    layer = MoDALinear(nn.Linear(48, 24).to(dtype), config, MoDAState(config), "probe").train()
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)  # B = 0 at initialisation would leave A without gradient
    layer.state.ids = torch.tensor([TEXT, IMAGE, TEXT])
    return layer


def outputs_and_gradients(layer, x, autocast):
    """The layer's output and the gradients of a loss on it for x and every adapter tensor, with
    the dropout masks drawn from seed 7."""
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    weights = [p for name, p in layer.named_parameters() if p.requires_grad]
    return [y, *torch.autograd.grad(y.float().square().sum(), [x, *weights])]


# float32: equal to rounding. bf16: the operands and products are today's; summing in another order
# moves a result by at most one bf16 rounding step (2**-8 relative), as bf16 comparisons elsewhere allow.
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2**-7, atol=1e-3)}
PRECISIONS = [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)]


@pytest.mark.parametrize("dtype, autocast", PRECISIONS, ids=["fp32", "bf16-weights", "bf16-autocast"])
@pytest.mark.parametrize("experts, routing", [(8, "soft"), (4, "soft"), (2, "hard")])
def test_lean_path_equals_todays_path(todays_moda_path, dtype, autocast, experts, routing):
    layer = probe_layer(dtype, experts, routing)
    x = torch.randn(3, 5, 48, dtype=dtype, requires_grad=True)
    lean = outputs_and_gradients(layer, x, autocast)
    with todays_moda_path():
        today = outputs_and_gradients(layer, x, autocast)
    tolerance = TOLERANCE[torch.bfloat16 if autocast else torch.float32]
    for got, want in zip(lean, today, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tolerance)
    assert all(g.abs().sum() > 0 for g in lean[1:]), "every adapter tensor and x get gradient"


@pytest.mark.slow
@pytest.mark.parametrize("dtype, autocast", PRECISIONS, ids=["fp32", "bf16-weights", "bf16-autocast"])
def test_compiled_kernels_equal_todays_path(todays_moda_path, monkeypatch, dtype, autocast):
    """The kernels through torch.compile (as on large inputs) on the same small layer."""
    monkeypatch.setattr(expert_dropout, "COMPILE_FROM", 0)
    layer = probe_layer(dtype)
    x = torch.randn(3, 5, 48, dtype=dtype, requires_grad=True)
    compiled = outputs_and_gradients(layer, x, autocast)
    with todays_moda_path():
        today = outputs_and_gradients(layer, x, autocast)
    for got, want in zip(compiled, today, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.bfloat16 if autocast else torch.float32])


def test_backward_keeps_x_and_a_byte_of_masks_per_element(todays_moda_path):
    """What the per-expert products keep for backward: x itself (no copy) and one byte per element
    for eight experts, where the loop over experts keeps a float32 masked copy per expert and a
    boolean mask per expert."""
    layer = probe_layer(torch.bfloat16)
    x = torch.randn(3, 40, 48, dtype=torch.bfloat16, requires_grad=True)
    kept = {}
    for name, path in (("lean", layer._project_down), ("today", lambda x: todays_moda_path_down(layer, x))):
        with saved_for_backward(layer) as tally:
            path(x)
        kept[name] = tally.bytes
    elements = x.numel()
    assert kept["lean"] == elements * (2 + 1)  # x in bf16, the packed bits
    assert kept["today"] == elements * (8 * 4 + 8)  # 8 float32 masked copies, 8 boolean masks


def todays_moda_path_down(layer, x):
    from conftest import todays_project_down

    return todays_project_down(layer, x)


def test_a_failed_compile_warns_once_and_runs_eagerly(monkeypatch):
    """Where torch.compile cannot build (no C++ compiler, no Triton) the kernels run eagerly, with
    a warning, and give what they give eagerly."""

    def cannot_build(graph, example_inputs):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(expert_dropout, "COMPILE_FROM", 0)
    monkeypatch.setattr(expert_dropout, "_compiling", {"on": True})
    kernel = expert_dropout.masked_down
    monkeypatch.setattr(kernel, "compiled", torch.compile(kernel.eager, backend=cannot_build))
    x, weight = torch.randn(4, 16), torch.randn(8, 16)
    bits, scale = expert_keep_bits(8, x, 0.1)
    with pytest.warns(UserWarning, match="run eagerly from now on"):
        got = ExpertDropoutDown.apply(x, weight, bits, scale, 8)
    assert not expert_dropout._compiling["on"]
    torch.testing.assert_close(got, kernel.eager(x, weight, bits, scale, 8, torch.float32))
