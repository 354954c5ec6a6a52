"""Linear layers on CPU through oneDNN: the same product as `F.linear`, about twice as fast for the LM head.

On CPU, torch computes a float32 `F.linear` with MKL's sgemm. For the shapes of a decode step (a
few to a few dozen rows against a wide weight) that is far from the machine's rate: on a 2-core AMD
EPYC (torch 2.13, 2 threads), 13 rows x SmolLM2's tied LM head (49,152 x 576) took 18-20 ms in
sgemm and 8-10 ms in oneDNN (torch's `mkldnn._linear_pointwise`, which reads the same dense,
row-major weight: nothing is copied or repacked), and the model's own layers gain less but gain.
bench/engine_cpu.py measures both the LM head alone and the whole engine with and without it
(LABKIT_ONEDNN=0), in the same run. The results agree with sgemm to float32 rounding (the sums run
in another order), and greedy tokens stay those of HF transformers.

`linear(x, weight, bias)` is what labkit/model.py calls (its layers are the `Linear` below): oneDNN for
float32 CPU tensors outside autograd (the op has no backward), `F.linear` otherwise. LABKIT_ONEDNN=0
turns it off (read at every call, so a benchmark can compare both in one process).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def enabled(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Use oneDNN for x @ weight.T? (float32 CPU tensors, no gradient wanted, LABKIT_ONEDNN not 0)."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and os.environ.get("LABKIT_ONEDNN", "1") != "0"
        and _available()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ weight (out, in).T + bias (out,) -> (..., out), as F.linear computes it."""
    if not enabled(x, weight):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose forward is `linear` above: labkit/model.py's layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["Linear", "enabled", "linear"]
