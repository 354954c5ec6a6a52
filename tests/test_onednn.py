"""labkit/onednn.py (CPU linear layers through oneDNN) against torch's F.linear, the oracle.

oneDNN sums in another order than MKL's sgemm, so results agree to float32 rounding, not bit for bit:
the bound is relative to the size of the terms summed (|x| @ |w|.T), a few ulps of float32 per term.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import onednn

pytestmark = pytest.mark.skipif(not onednn._available(), reason="this torch build has no oneDNN")


def check_close(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    scale = F.linear(x.double().abs(), w.double().abs(), None if b is None else b.double().abs())
    assert got.shape == want.shape and got.dtype == torch.float32
    assert bool(((got.double() - want).abs() <= 1e-6 * scale + 1e-30).all())


@settings(max_examples=30, deadline=None)
@given(
    lead=st.lists(st.integers(0, 5), min_size=1, max_size=2),
    d_in=st.integers(1, 70),
    d_out=st.integers(1, 300),
    bias=st.booleans(),
    transposed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_matches_f_linear(lead, d_in, d_out, bias, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d_in, generator=g)
    if transposed and len(lead) == 1:  # a non-contiguous input: a transposed (d_in, rows) tensor
        x = torch.randn(d_in, lead[0], generator=g).t()
    w = torch.randn(d_out, d_in, generator=g)
    b = torch.randn(d_out, generator=g) if bias else None
    with torch.inference_mode():
        assert onednn.enabled(x, w)
        check_close(onednn.linear(x, w, b), x, w, b)


def test_lm_head_shape_matches():
    """SmolLM2's tied head: 13 rows against a (49,152 x 576) weight."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(13, 576, generator=g), torch.randn(49152, 576, generator=g) * 0.05
    with torch.inference_mode():
        check_close(onednn.linear(x, w), x, w, None)


def test_falls_back_where_it_must(monkeypatch):
    w = torch.randn(4, 3)
    assert not onednn.enabled(torch.randn(2, 3, dtype=torch.float64), w.double())  # float32 only
    assert not onednn.enabled(torch.randn(2, 3), w.t().contiguous().t())  # non-contiguous weight
    monkeypatch.setenv("LABKIT_ONEDNN", "0")
    assert not onednn.enabled(torch.randn(2, 3), w)


def test_gradients_still_flow_through_linear():
    """The oneDNN op has no backward: with autograd on, the layer takes F.linear and trains as nn.Linear."""
    layer, ref = onednn.Linear(3, 4), torch.nn.Linear(3, 4)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(5, 3)
    assert not onednn.enabled(x, layer.weight)
    layer(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad, atol=0, rtol=0)
    with torch.no_grad():
        assert onednn.enabled(x, layer.weight)
        check_close(layer(x), x, layer.weight, layer.bias)
