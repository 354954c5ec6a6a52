"""Sampler: hand-worked filtered distributions, chi-square tests of the draws, seeds, greedy, errors.

The expected distributions are computed here by a separate, plain-python reading of the rules
(temperature, then top-k with ties kept, then top-p over the renormalised survivors), not by the
code under test.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from labkit.sampler import Sampler, SamplingParams, filter_logits, make_generator


def expected_distribution(logits, temperature=1.0, top_k=-1, top_p=1.0):
    """Plain-python oracle: the probability of each token after the three filters."""
    z = [x / temperature for x in logits]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    keep = set(order)
    if top_k != -1:
        kth = z[order[min(top_k, len(z)) - 1]]
        keep = {i for i in keep if z[i] >= kth}
    m = max(z)
    weights = {i: math.exp(z[i] - m) for i in keep}
    total = sum(weights.values())
    if top_p < 1:
        mass, nucleus = 0.0, set()
        for i in order:
            if i not in keep:
                continue
            if mass >= top_p and nucleus:
                break
            nucleus.add(i)
            mass += weights[i] / total
        keep = nucleus
    total = sum(weights[i] for i in keep)
    return np.array([weights[i] / total if i in keep else 0.0 for i in range(len(z))])


def kept(logits, top_k=-1, top_p=1.0):
    row = filter_logits(torch.tensor([logits]), torch.tensor([top_k]), torch.tensor([top_p]))[0]
    return set(torch.isfinite(row).nonzero().flatten().tolist())


LOG_HALVES = [math.log(p) for p in (0.5, 0.25, 0.125, 0.0625, 0.0625)]  # probabilities exact in binary


def test_hand_worked_filters():
    assert kept(LOG_HALVES, top_k=2) == {0, 1}
    assert kept(LOG_HALVES, top_p=0.75) == {0, 1}  # 0.5 + 0.25 reaches 0.75: stop there
    assert kept(LOG_HALVES, top_p=0.8) == {0, 1, 2}  # 0.75 < 0.8: one more token
    assert kept(LOG_HALVES, top_p=0.1) == {0}  # the most likely token always stays
    # top-k first, then top-p over the RENORMALISED survivors: after top-k=2 the probabilities are
    # 2/3 and 1/3, and 2/3 >= 0.6 already, so only token 0 remains (top-p alone would keep 0 and 1)
    assert kept(LOG_HALVES, top_k=2, top_p=0.6) == {0}
    assert kept(LOG_HALVES, top_p=0.6) == {0, 1}
    # ties with the k-th largest logit are kept
    assert kept([1.0, 3.0, 3.0, 3.0, 0.0], top_k=2) == {1, 2, 3}


def test_hand_worked_distribution_after_top_k():
    probs = expected_distribution(LOG_HALVES, top_k=3)
    np.testing.assert_allclose(probs, [4 / 7, 2 / 7, 1 / 7, 0, 0], rtol=1e-12)


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [
        (1.0, -1, 1.0),
        (0.7, 3, 1.0),
        (1.0, -1, 0.7),
        (1.5, 5, 0.8),
    ],
)
def test_draws_follow_the_filtered_distribution(temperature, top_k, top_p):
    logits = torch.randn(8, generator=torch.Generator().manual_seed(0)) * 1.5
    n = 6000
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    g = make_generator(1234)
    draws = Sampler().sample(logits.expand(n, -1), [params] * n, [g] * n)
    counts = np.bincount(draws.numpy(), minlength=8)
    probs = expected_distribution(logits.tolist(), temperature, top_k, top_p)
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    nz = probs > 0
    stat = chisquare(counts[nz], probs[nz] * n)
    assert stat.pvalue > 1e-3, (counts, probs * n, stat)
    assert nz.sum() < 8 or (top_k == -1 and top_p == 1)  # the filters actually removed something


def test_same_seed_same_tokens_whatever_the_batch():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    p = SamplingParams(temperature=1.0, top_p=0.95, seed=7)
    other = SamplingParams(temperature=0.8, top_k=10)
    s = Sampler()

    def run(batch_with_others):
        g = make_generator(p.seed)
        out = []
        for _ in range(20):
            if batch_with_others:
                toks = s.sample(logits, [other, p, other], [None, g, None])
                out.append(int(toks[1]))
            else:
                out.append(int(s.sample(logits[1:2], [p], [g])[0]))
        return out

    alone, mixed = run(False), run(True)
    assert alone == mixed
    assert len(set(alone)) > 1  # it is really sampling
    g2 = make_generator(8)
    assert [int(s.sample(logits[1:2], [p], [g2])[0]) for _ in range(20)] != alone


def test_greedy_is_argmax_and_mixes_with_sampling():
    logits = torch.randn(16, 100, generator=torch.Generator().manual_seed(2))
    greedy = SamplingParams(temperature=0)
    assert torch.equal(Sampler().sample(logits, [greedy] * 16), logits.argmax(-1))
    hot = SamplingParams(temperature=2.0)
    params = [greedy if i % 2 else hot for i in range(16)]
    out = Sampler().sample(logits, params, [make_generator(i) for i in range(16)])
    assert torch.equal(out[1::2], logits[1::2].argmax(-1))
    assert out.dtype == torch.int64 and out.shape == (16,)


def test_top_k_one_is_greedy_even_at_high_temperature():
    logits = torch.randn(32, 40, generator=torch.Generator().manual_seed(3))
    out = Sampler().sample(logits, [SamplingParams(temperature=5.0, top_k=1)] * 32, [make_generator(0)] * 32)
    assert torch.equal(out, logits.argmax(-1))


@settings(max_examples=60, deadline=None)
@given(
    # distinct values exact in float32, so the oracle and the sampler sort them the same way
    logits=st.lists(st.integers(-40, 40), min_size=1, max_size=12, unique=True).map(
        lambda xs: [x / 8 for x in xs]
    ),
    top_k=st.one_of(st.just(-1), st.integers(1, 14)),
    top_p=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
)
def test_filter_matches_oracle_and_draws_stay_inside(logits, top_k, top_p, seed):
    want = expected_distribution(logits, 1.0, top_k, top_p)
    keep = kept(logits, top_k, top_p)
    # compare as sets, allowing only float-rounding disagreement exactly at the top-p boundary
    diff = keep ^ set(np.flatnonzero(want).tolist())
    if diff:
        probs = expected_distribution(logits, 1.0, top_k, 1.0)
        order = np.argsort(-np.array(logits), kind="stable")
        before = {int(i): probs[order[:r]].sum() for r, i in enumerate(order)}
        assert all(abs(before[i] - top_p) < 1e-5 for i in diff), (keep, want)
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)
    tok = Sampler().sample(torch.tensor([logits]), [params], [make_generator(seed)])
    assert int(tok[0]) in keep


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(max_tokens=0), ["max_tokens=0", ">= 1"]),
        (dict(temperature=-0.5), ["temperature=-0.5", ">= 0", "greedy"]),
        (dict(top_p=0.0), ["top_p=0.0", "(0, 1]", "1.0"]),
        (dict(top_p=1.5), ["top_p=1.5", "(0, 1]"]),
        (dict(top_k=0), ["top_k=0", "-1", ">= 1"]),
        (dict(top_k=-2), ["top_k=-2", "-1"]),
        (dict(temperature=float("nan")), ["temperature=nan"]),
        (dict(stop_token_ids=[-3]), ["-3"]),
    ],
)
def test_bad_params_raise_naming_value_rule_and_fix(kwargs, words):
    with pytest.raises(ValueError) as e:
        SamplingParams(**kwargs)
    for w in words:
        assert w in str(e.value)
    assert "Fix" in str(e.value) or "must" in str(e.value)


def test_params_normalise_stop_and_know_greedy():
    p = SamplingParams(stop="\n\n", temperature=0)
    assert p.stop == ["\n\n"] and p.greedy and not SamplingParams().greedy
    assert make_generator(None) is None


def test_sampler_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 SamplingParams for 3 rows"):
        Sampler().sample(torch.zeros(3, 5), [SamplingParams()] * 2)
