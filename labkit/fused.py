"""Fused elementwise kernels (Triton, CUDA only) for the model's RMSNorm, RoPE and SwiGLU activation.

In torch, RMSNorm is 8 kernels (cast, square, mean, add, rsqrt, multiply, cast, scale) and RoPE 7 per
tensor. A decode step of a 28-layer model runs them about 1,100 times on rows of a few KB, where each
kernel costs its launch latency (a couple of microseconds even inside a CUDA graph), not its bytes.
Here each is one kernel, computing the same function with the same roundings as labkit/model.py's
torch code (statistics in float32, the result rounded to the input dtype where torch rounds it). Three
are fused further: Qwen3's per-head q/k RMSNorm with the RoPE that follows it (4 kernels a layer -> 2),
SwiGLU's silu(gate) * up (2 -> 1), and the residual add with the RMSNorm after it (4 -> 2).
labkit/model.py calls them for CUDA tensors when triton is installed; LABKIT_FUSED=0 turns them off.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def _available() -> bool:
    return importlib.util.find_spec("triton") is not None


def enabled(x: torch.Tensor) -> bool:
    """Use the fused kernels for x? (CUDA tensor, triton installed, LABKIT_FUSED not 0)."""
    return x.is_cuda and os.environ.get("LABKIT_FUSED", "1") != "0" and _available()


def rope_supported(x: torch.Tensor) -> bool:
    """The fused RoPE handles (T, heads, D) with D / 2 a power of two (64, 128, 256: every model here)."""
    half = x.shape[-1] // 2
    return x.dim() == 3 and x.shape[-1] % 2 == 0 and half & (half - 1) == 0


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / n_cols + eps)
        y = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)  # torch: x32 * rstd, then .to(dtype)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n_cols + cols, (w * y).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # res_out = x + res (rounded to the dtype), out = norm(res_out)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        r = x + tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        r = r.to(res_out_ptr.dtype.element_ty)  # torch: the sum in float32, rounded once to the dtype
        tl.store(res_out_ptr + row * n_cols + cols, r, mask=mask)
        r = r.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(r * r, 0) / n_cols + eps)
        y = (r * rstd).to(res_out_ptr.dtype.element_ty).to(tl.float32)  # as rms_norm_kernel
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n_cols + cols, (w * y).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, heads, HALF: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # one (token, head) row of head_dim = 2 * HALF
        t = row // heads
        i = tl.arange(0, HALF)
        dt = out_ptr.dtype.element_ty
        x1 = tl.load(x_ptr + row * 2 * HALF + i)
        x2 = tl.load(x_ptr + row * 2 * HALF + HALF + i)
        c1 = tl.load(cos_ptr + t * 2 * HALF + i).to(dt)
        c2 = tl.load(cos_ptr + t * 2 * HALF + HALF + i).to(dt)
        s1 = tl.load(sin_ptr + t * 2 * HALF + i).to(dt)
        s2 = tl.load(sin_ptr + t * 2 * HALF + HALF + i).to(dt)
        # torch: x * cos + cat(-x2, x1) * sin, each product and the sum rounded to the dtype
        o1 = (x1 * c1).to(dt) + (-x2 * s1).to(dt)
        o2 = (x2 * c2).to(dt) + (x1 * s2).to(dt)
        tl.store(out_ptr + row * 2 * HALF + i, o1.to(dt))
        tl.store(out_ptr + row * 2 * HALF + HALF + i, o2.to(dt))

    @triton.jit
    def rms_norm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, heads, eps, HALF: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # one (token, head) row: RMSNorm over it, then RoPE
        t = row // heads
        i = tl.arange(0, HALF)
        dt = out_ptr.dtype.element_ty
        x1 = tl.load(x_ptr + row * 2 * HALF + i).to(tl.float32)
        x2 = tl.load(x_ptr + row * 2 * HALF + HALF + i).to(tl.float32)
        rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0)) / (2 * HALF) + eps)
        w1 = tl.load(w_ptr + i).to(tl.float32)
        w2 = tl.load(w_ptr + HALF + i).to(tl.float32)
        xt = x_ptr.dtype.element_ty  # torch: weight * (x32 * rstd).to(x.dtype), in the promoted dtype
        x1 = (w1 * (x1 * rstd).to(xt).to(tl.float32)).to(dt)
        x2 = (w2 * (x2 * rstd).to(xt).to(tl.float32)).to(dt)
        c1 = tl.load(cos_ptr + t * 2 * HALF + i).to(dt)
        c2 = tl.load(cos_ptr + t * 2 * HALF + HALF + i).to(dt)
        s1 = tl.load(sin_ptr + t * 2 * HALF + i).to(dt)
        s2 = tl.load(sin_ptr + t * 2 * HALF + HALF + i).to(dt)
        o1 = (x1 * c1).to(dt) + (-x2 * s1).to(dt)  # as rope_kernel
        o2 = (x2 * c2).to(dt) + (x1 * s2).to(dt)
        tl.store(out_ptr + row * 2 * HALF + i, o1.to(dt))
        tl.store(out_ptr + row * 2 * HALF + HALF + i, o2.to(dt))

    @triton.jit
    def silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        dt = out_ptr.dtype.element_ty
        g = tl.load(gate_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)  # torch: silu rounded to the dtype, then * up
        tl.store(out_ptr + row * n_cols + cols, (act * u).to(dt), mask=mask)

    return triton, rms_norm_kernel, rope_kernel, rms_norm_rope_kernel, silu_mul_kernel, add_rms_norm_kernel


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., dim) -> weight * (x / rms(x)) in x's dtype, like labkit.model.RMSNorm."""
    triton, kernel = _kernels()[:2]
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if x2.shape[0]:
        kernel[(x2.shape[0],)](x2, weight, out, x2.shape[1], eps, BLOCK=triton.next_power_of_2(x2.shape[1]))
    return out.view(*x.shape[:-1], x.shape[-1])


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one kernel: a decoder layer's residual add and the norm
    that follows it (vLLM's fused_add_rms_norm). x and residual (..., dim), one dtype."""
    triton, kernel = _kernels()[0], _kernels()[5]
    assert x.shape == residual.shape and x.dtype == residual.dtype, (x.shape, residual.shape, x.dtype, residual.dtype)
    x2, r2 = x.reshape(-1, x.shape[-1]).contiguous(), residual.reshape(-1, x.shape[-1]).contiguous()
    new_residual = torch.empty_like(x2)
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if x2.shape[0]:
        block = triton.next_power_of_2(x2.shape[1])
        kernel[(x2.shape[0],)](x2, r2, weight, out, new_residual, x2.shape[1], eps, BLOCK=block)
    return out.view(x.shape[:-1] + out.shape[-1:]), new_residual.view(x.shape)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, D), cos/sin (T, D) float32 -> x rotated, like labkit.model.apply_rope."""
    kernel = _kernels()[2]
    T, heads, D = x.shape
    assert rope_supported(x), f"head_dim {D}: the fused RoPE needs head_dim / 2 a power of two"
    x = x if x.is_contiguous() else x.contiguous()
    out = torch.empty_like(x)
    if T:
        kernel[(T * heads,)](x, cos.contiguous(), sin.contiguous(), out, heads, HALF=D // 2)
    return out


def rms_norm_rope(x: torch.Tensor, norm: torch.nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rope(norm(x), cos, sin) in one kernel: Qwen3's per-head q/k RMSNorm, then RoPE.
    x (T, heads, D) with D / 2 a power of two, norm an RMSNorm over D, cos/sin (T, D) float32."""
    kernel, weight = _kernels()[3], norm.weight
    T, heads, D = x.shape
    assert rope_supported(x), f"head_dim {D}: the fused RoPE needs head_dim / 2 a power of two"
    x = x if x.is_contiguous() else x.contiguous()
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if T:
        kernel[(T * heads,)](x, weight, cos.contiguous(), sin.contiguous(), out, heads, norm.eps, HALF=D // 2)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (SwiGLU's activation), (..., n) each, in one kernel instead of two."""
    triton, kernel = _kernels()[0], _kernels()[4]
    assert gate.shape == up.shape and gate.dtype == up.dtype, (gate.shape, up.shape, gate.dtype, up.dtype)
    g2, u2 = gate.reshape(-1, gate.shape[-1]).contiguous(), up.reshape(-1, up.shape[-1]).contiguous()
    out = torch.empty_like(g2)
    rows, n = g2.shape
    block = min(1024, triton.next_power_of_2(n))
    if rows:
        kernel[(rows, triton.cdiv(n, block))](g2, u2, out, n, BLOCK=block)
    return out.view(gate.shape)
