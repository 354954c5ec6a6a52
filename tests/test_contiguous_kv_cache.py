"""labkit.contiguous_kv_cache: the chapter 3 cache and its forward pass, against labkit's paged cache."""

import pytest
import torch

from labkit import contiguous_kv_cache as ckv
from labkit import measure
from labkit.loader import random_model
from labkit.model import ModelConfig

TINY = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("chunks", [[[1, 2, 3, 4], [5], [6, 7]], [[9]], [[3, 1, 4, 1, 5, 9, 2, 6]]])
def test_forward_over_the_contiguous_cache_matches_the_paged_cache(chunks):
    model = random_model(TINY, seed=3)
    cache = ckv.for_model(ckv.ContiguousKVCache, model, 20)
    paged = measure.SequenceKVCache(model, 20)
    for ids in chunks:
        torch.testing.assert_close(ckv.forward(model, cache, ids), paged.forward(ids), rtol=1e-5, atol=1e-5)
    assert len(cache) == sum(map(len, chunks))


def test_views_stay_in_the_preallocated_buffer_and_overflow_raises():
    cache = ckv.ContiguousKVCache(num_layers=2, max_len=4, num_kv_heads=1, head_dim=2)
    for layer in (0, 1):
        cache.append(layer, torch.ones(3, 1, 2), 2 * torch.ones(3, 1, 2))
    k, v = cache.view(1)
    assert k.shape == (3, 1, 2) and v[0, 0, 0] == 2 and len(cache) == 3
    assert k.untyped_storage().data_ptr() == cache.k.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="larger max_len"):
        cache.append(0, torch.ones(2, 1, 2), torch.ones(2, 1, 2))
    assert cache.lengths == [3, 3]  # nothing written by the failed append


def test_saved_activation_bytes_is_zero_under_no_grad():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 4)
    loss = lambda m: m(x).pow(2).mean()  # noqa: E731
    saved = measure.saved_activation_bytes(model, loss)
    assert saved > 0
    with torch.no_grad():
        assert measure.saved_activation_bytes(model, loss) == 0
    with measure.saved_for_backward() as tensors:
        loss(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert saved == measure.storage_bytes(t for t in tensors if t.untyped_storage().data_ptr() not in params)
