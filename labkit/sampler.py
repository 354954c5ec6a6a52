"""Turning logits into next tokens: SamplingParams and a batched Sampler.

Per row of logits (one per request), in this order (the order vLLM and HF transformers use):
  1. temperature: temperature == 0 means greedy (argmax, nothing else applies); otherwise the
     logits are divided by it (< 1 sharpens, > 1 flattens);
  2. top-k: keep the k largest logits (every token tied with the k-th largest is kept too);
     top_k = -1 keeps all;
  3. top-p (nucleus): over the distribution renormalised after top-k, keep the smallest set of most
     likely tokens whose total probability is >= top_p (the most likely token is always kept);
     top_p = 1 keeps all;
  4. draw one token from the renormalised survivors.

Randomness: each request may carry its own torch.Generator (`make_generator(params.seed)`); a row
with one draws its uniform number from it, so the same seed gives the same tokens whatever else is
in the batch. A row without one uses torch's global generator. The draw is inverse-CDF: one uniform
u per row, and the token is the first whose cumulative probability exceeds u.

What this does not do: repetition / frequency / presence penalties, min_p, logit bias, beam search,
logprobs. Stop strings and stop tokens are carried here for the engine, which checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy; 1 = the model's own distribution
    top_k: int = -1  # -1 = no top-k; otherwise keep the k most likely tokens (k >= 1)
    top_p: float = 1.0  # 1 = no nucleus filter; otherwise in (0, 1)
    max_tokens: int = 16  # new tokens to generate at most
    stop_token_ids: list[int] = field(default_factory=list)  # generation ends after emitting one of these
    stop: list[str] = field(default_factory=list)  # ... or when the text contains one of these strings
    ignore_eos: bool = False  # True: keep going past the model's eos token (for benchmarks)
    seed: int | None = None  # per-request seed; None = torch's global generator

    def __post_init__(self) -> None:
        """The one place sampling parameters are checked; everything downstream trusts them."""
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        rules = [
            (_is_int(self.max_tokens) and self.max_tokens >= 1,
             f"max_tokens={self.max_tokens!r}: a request must generate at least 1 token. Fix: pass an int >= 1."),
            (self.temperature >= 0,  # False for NaN too
             f"temperature={self.temperature!r}: it must be >= 0 (0 = greedy). Fix: use 0 or e.g. 0.7."),
            (0 < self.top_p <= 1,
             f"top_p={self.top_p!r}: it must lie in (0, 1]. Fix: use 1.0 to turn nucleus sampling off, or e.g. 0.9."),
            (_is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1),
             f"top_k={self.top_k!r}: it must be -1 (off) or an int >= 1. Fix: use -1 to keep every token, or e.g. 50."),
            (self.seed is None or _is_int(self.seed), f"seed={self.seed!r}: it must be an int or None. Fix: seed=0."),
            (all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids={self.stop_token_ids!r}: token ids are ints >= 0. Fix: use the tokenizer's ids."),
            (all(isinstance(x, str) and x for x in self.stop),
             f"stop={self.stop!r}: stop strings must be non-empty str. Fix: drop empty strings (they stop at once)."),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A torch.Generator seeded with `seed` on `device`, or None (use the global one) when seed is None."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _filter_sorted(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor):
    """Top-k then top-p in sorted order. logits (N, V) already divided by temperature; top_k (N,) int64
    (-1 = off); top_p (N,) float. Returns (sorted_logits, order, drop), each (N, V): the logits sorted
    descending, their vocabulary ids, and True where a token is filtered out. The survivors of each
    row are always a prefix of its sorted order (at least one token)."""
    N, V = logits.shape
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
    # top-k: the k-th largest value is the threshold; ties with it survive
    k = torch.where(top_k < 1, V, top_k.clamp(max=V))  # (N,)
    kth = sorted_logits.gather(1, (k - 1)[:, None])  # (N, 1)
    drop = sorted_logits < kth  # (N, V)
    # top-p over what top-k kept: drop a token when the mass strictly before it already reaches top_p
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (N, V), non-decreasing, 0 at rank 0
    first = torch.arange(V, device=logits.device)[None, :] == 0
    drop |= (mass_before >= top_p[:, None]) & (top_p[:, None] < 1) & ~first
    return sorted_logits, order, drop


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits (N, V) (already divided by temperature) with -inf wherever top-k or top-p removes a token.

    top_k (N,) int64 with -1 = off; top_p (N,) float with 1 = off. Kept entries are unchanged."""
    _, order, drop = _filter_sorted(logits, top_k, top_p)
    mask = torch.zeros_like(drop).scatter(1, order, drop)  # back to vocabulary order
    return logits.masked_fill(mask, float("-inf"))


class Sampler:
    """Batched sampling: one token per row of logits, each row with its own SamplingParams."""

    def sample(
        self, logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None] | None = None
    ) -> torch.Tensor:
        """logits (N, V), one SamplingParams (and generator or None) per row -> (N,) int64 token ids."""
        N, V = logits.shape
        if len(params) != N:
            raise ValueError(f"got {len(params)} SamplingParams for {N} rows of logits; pass one per row.")
        generators = generators if generators is not None else [None] * N
        if len(generators) != N:
            raise ValueError(f"got {len(generators)} generators for {N} rows of logits; pass one (or None) per row.")
        logits = logits.float()
        rows = [i for i, p in enumerate(params) if not p.greedy]
        # greedy rows are done here; the others are overwritten below (no argmax when there are none)
        out = logits.argmax(dim=-1) if len(rows) < N else torch.empty(N, dtype=torch.int64, device=logits.device)
        if not rows:
            return out
        dev = logits.device
        seeded = any(generators[i] is not None for i in rows)  # else one draw for all rows, not one per row
        u = torch.cat([_uniform(generators[i], dev) for i in rows]) if seeded else torch.rand(len(rows), device=dev)
        idx = torch.tensor(rows).to(dev, non_blocking=True)  # no wait for the GPU to finish the forward pass
        temp = torch.tensor([params[i].temperature for i in rows]).to(dev, non_blocking=True)
        scaled = (logits if len(rows) == N else logits[idx]) / temp[:, None]  # (R, V); all rows: no gather
        if all(params[i].top_k == -1 and params[i].top_p == 1 for i in rows):  # no filter: no vocabulary sort
            out[idx] = _inverse_cdf(scaled.softmax(dim=-1).cumsum(dim=-1), u).clamp_max(V - 1)
            return out
        top_k = torch.tensor([params[i].top_k for i in rows], device=dev)
        top_p = torch.tensor([params[i].top_p for i in rows], device=dev)
        sorted_logits, order, drop = _filter_sorted(scaled, top_k, top_p)
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)  # (R, V), sorted order
        rank = _inverse_cdf(probs.cumsum(dim=-1), u)
        last_kept = (~drop).sum(dim=-1) - 1  # survivors are a prefix; never step past it
        out[idx] = order.gather(1, torch.minimum(rank, last_kept)[:, None]).squeeze(1)
        return out


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """cdf (R, V) non-decreasing, u (R,) in [0, 1) -> (R,) the first index whose cdf exceeds u * total."""
    target = (u * cdf[:, -1])[:, None]  # scaled by the total, which rounding keeps near 1
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _uniform(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(1,) uniform in [0, 1) on `device`, from `generator` (on any device) or the global generator."""
    if generator is None:
        return torch.rand(1, device=device)
    return torch.rand(1, generator=generator, device=generator.device).to(device)


__all__ = ["SamplingParams", "Sampler", "filter_logits", "make_generator"]
