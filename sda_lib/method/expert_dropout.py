"""MoDA's per-expert dropout without a masked copy of the input per expert.

The authors' MOELoraLinear gives every expert its own dropout mask, so a loop over experts keeps,
for backward, E masked copies of each adapted projection's input: several times what a LoRA of
the same rank keeps (`sda bench moda-memory`; measured in docs/results.md#moda-memory).
`ExpertDropoutDown` is the same function
(same masks from the same generator state, same outputs and gradients) keeping only the input as
it came and the masks packed into bits, one byte per element for up to eight experts; backward
rebuilds each expert's masked input from them.

The masking and the products are elementwise work over E copies of the input, so their kernels
run through torch.compile on large inputs, which fuses unpacking, masking and summing into single
passes (on CPU C++, on a GPU Triton); small inputs, and hosts where torch.compile cannot build
(no C++ compiler, no Triton), run the same functions eagerly.
"""

from __future__ import annotations

import functools
import warnings

import torch

# From this many elements of a projection's input the kernels run compiled (the small preset, mini,
# the 7B). Below it (the tiny preset, the unit tests) compiling, half a minute or more once per
# process on 2 CPU cores, costs more than it saves; above it the eager kernels cost about twice a
# LoRA's step on the small preset, and compiled ones 1.2 (`moda-vs-lora`).
COMPILE_FROM = 1 << 17


def expert_keep_bits(experts: int, like: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Independent dropout masks for `experts` experts over `like`'s elements, packed one bit per
    expert: [ceil(experts / 8), *like.shape] bytes, bit i % 8 of byte i // 8 set where expert i
    keeps the element; and the inverted-dropout scale.

    Torch's CPU generator spends one draw per element, which made mask drawing half of a MoDA
    training step on CPU; each 64-bit draw here gives four 16-bit uniforms (expert-major: expert
    i's uniforms are the i-th block), so p is rounded to a multiple of 1/65536 (0.1 -> 0.10001)
    and the scale uses the rounded p.
    """
    n = experts * like.numel()
    cut = round(p * 65536)
    draws = _draw_buffer((n + 3) // 4, like.device).random_(-(2**63), None)
    return _packed(draws.view(torch.int16)[:n].view(experts, *like.shape), cut - 32768), 65536 / (65536 - cut)


_cpu_draws = torch.empty(0, dtype=torch.int64)


def _draw_buffer(count: int, device: torch.device) -> torch.Tensor:
    """`count` int64 slots for the draws. On CPU one buffer is kept and grown: a fresh block over
    glibc's 32 MiB mmap threshold is page-faulted in on every call, which at the 7B's widths cost
    more than drawing into it (a CUDA device's caching allocator reuses its blocks by itself)."""
    global _cpu_draws
    if device.type != "cpu":
        return torch.empty(count, dtype=torch.int64, device=device)
    if _cpu_draws.numel() < count:
        _cpu_draws = torch.empty(count, dtype=torch.int64)
    return _cpu_draws[:count]


def expert_keep(bits: torch.Tensor, expert: int, dtype: torch.dtype) -> torch.Tensor:
    """One expert's mask out of expert_keep_bits' packed bits: 1 where kept, else 0, in `dtype`."""
    return ((bits[expert // 8] >> (expert % 8)) & 1).to(dtype)


class ExpertDropoutDown(torch.autograd.Function):
    """cat_i A_i dropout_i(x) for experts i = 0..E-1 (A_i: the i-th of E equal row blocks of
    `weight`), each dropout under the expert's own mask from `bits`, scaled by `scale`.

    The loop over experts it replaces casts x to A's dtype, multiplies by the scale, masks and
    runs F.linear per expert; under autocast F.linear casts both operands to the autocast dtype.
    So do these kernels: operands in that compute dtype, products summed in float32 (as a matmul
    accumulates), and the gradient for x summed over experts in A's dtype.
    """

    @staticmethod
    def forward(ctx, x, weight, bits, scale: float, experts: int):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        with torch.autocast(device, enabled=False):
            hidden = masked_down(x, weight, bits, scale, experts, dtype)
        ctx.save_for_backward(x, weight, bits)
        ctx.scale, ctx.experts, ctx.dtype = scale, experts, dtype
        return hidden

    @staticmethod
    def backward(ctx, grad):
        x, weight, bits = ctx.saved_tensors
        args = (x, weight, bits, grad, ctx.scale, ctx.experts, ctx.dtype)
        with torch.autocast(x.device.type, enabled=False):
            grad_x = masked_down_grad_x(*args) if ctx.needs_input_grad[0] else None
            grad_weight = masked_down_grad_weight(*args)
        return grad_x, grad_weight, None, None, None


def _compiled_when_large(kernel=None, *, elements=lambda x, *args: x.numel()):
    """`kernel` through torch.compile when `elements(*args)` (the projection input's size)
    reaches COMPILE_FROM, else eagerly; should compiling fail, a warning and eager from then on."""
    if kernel is None:
        return functools.partial(_compiled_when_large, elements=elements)

    @functools.wraps(kernel)
    def run(*args):
        if _compiling["on"] and elements(*args) >= COMPILE_FROM:
            if run.compiled is None:  # made on first use: importing torch's compiler takes seconds
                # rounding to bf16 where the eager code rounds, so compiled and eager results agree
                run.compiled = torch.compile(kernel, options={"emulate_precision_casts": True})
            try:
                return run.compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as err:
                _compiling["on"] = False
                warnings.warn(
                    f"torch.compile cannot build MoDA's per-expert dropout kernels here ({str(err).splitlines()[0]}); "
                    "they run eagerly from now on: the same results, more slowly",
                    stacklevel=2,
                )
        return kernel(*args)

    run.eager, run.compiled = kernel, None
    return run


_compiling = {"on": True}  # off for the rest of the process once torch.compile has failed


@_compiled_when_large(elements=lambda uniforms, threshold: uniforms[0].numel())
def _packed(uniforms, threshold: int):
    """Bit i % 8 of byte i // 8 set where expert i's uniform reaches the threshold (summed in
    int32: compiled, a quarter quicker on CPU than shifting and or-ing bytes)."""
    experts = uniforms.shape[0]
    keep = [(uniforms[i] >= threshold).to(torch.int32) * (1 << (i % 8)) for i in range(experts)]
    return torch.stack([sum(keep[g : g + 8]).to(torch.uint8) for g in range(0, experts, 8)])


@_compiled_when_large
def masked_down(x, weight, bits, scale: float, experts: int, dtype):
    """The forward: [..., E * rank] in `dtype`."""
    kept = _scaled(x, weight.dtype, scale, dtype)
    hidden = [
        (_f32(kept * expert_keep(bits, i, dtype))[..., None, :] * _f32(a.to(dtype))).sum(-1)
        for i, a in enumerate(weight.chunk(experts))
    ]
    return torch.cat(hidden, dim=-1).to(dtype)


@_compiled_when_large
def masked_down_grad_x(x, weight, bits, grad, scale: float, experts: int, dtype):
    """The gradient for x: each expert's input gradient (in `dtype`, as a matmul in it returns
    it) under its mask, summed in weight's dtype."""
    grad = _f32(grad.to(dtype))
    grad_x = 0.0
    for i, (a, g) in enumerate(zip(weight.chunk(experts), grad.chunk(experts, dim=-1))):
        expert_grad = (g[..., None] * _f32(a.to(dtype))).sum(-2).to(dtype)
        grad_x = grad_x + expert_grad.to(weight.dtype) * expert_keep(bits, i, weight.dtype)
    return (grad_x * scale).to(x.dtype)


@_compiled_when_large
def masked_down_grad_weight(x, weight, bits, grad, scale: float, experts: int, dtype):
    """The gradient for the weight: each expert's masked input rebuilt from the bits."""
    width = x.shape[-1]
    kept = _scaled(x, weight.dtype, scale, dtype).reshape(-1, width)
    grad = _f32(grad.to(dtype).reshape(-1, grad.shape[-1]))
    blocks = []
    for i, g in enumerate(grad.chunk(experts, dim=-1)):
        masked = _f32(kept * expert_keep(bits, i, dtype).reshape(-1, width))
        blocks.append((g[:, :, None] * masked[:, None, :]).sum(0).to(dtype))
    return torch.cat(blocks).to(weight.dtype)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def _scaled(x: torch.Tensor, dtype: torch.dtype, scale: float, compute: torch.dtype) -> torch.Tensor:
    """What each expert masks: x in `dtype` times the dropout scale, then in the compute dtype."""
    return (x.to(dtype) * scale).to(compute)
