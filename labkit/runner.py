"""ModelRunner: one scheduler step -> one flat batch -> one forward pass -> logits of the rows that sample.

The scheduler says, for each request in the step, which of its tokens to compute
(`num_computed_tokens .. num_computed_tokens + num_new_tokens - 1`) and which physical blocks hold
its context. The runner turns that into the tensors of ONE flat batch, with no padding (the
attention metadata comes from `AttentionMetadata.build`, the one place a slot is computed):

    input_ids        (T,)   int64   the new tokens of every request, concatenated in batch order
    positions        (T,)   int64   each token's position in its own sequence
    slot_mapping     (T,)   int64   where each token's K/V is written: block_table[p // B] * B + p % B
    query_start_loc  (S+1,) int32   request i owns rows query_start_loc[i] : query_start_loc[i + 1]
    seq_lens         (S,)   int32   context length after this step (computed + new)
    block_tables     (S, M) int32   physical block ids, padded with -1

A decode (1 row), a whole prefill, a prefill chunk and a prefill over a cached prefix are all the same
thing here, so one batch mixes them freely: there is no whole-batch switch between a prefill mode
and a decode mode, as some descriptions of inference engines have it.

The forward pass writes the K/V of every input token into the cache. The token sampled at the end of
this step is NOT written now: it is an input token of the NEXT step, whose forward pass writes it.

Logits are computed only for the last row of each request whose `sample` is True (a partial prefill
chunk has nothing to sample), so the (T, hidden) x (hidden, vocab) product shrinks to (S', vocab).

Everything is built per step with a handful of list concatenations and vectorized torch ops; nothing
loops over tokens in Python. What this does not do (yet): CUDA graphs, pinned-memory staging, persistent
input buffers, or speculative decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import torch

from labkit.attention import AttentionMetadata
from labkit.protocols import ScheduledRequest


@dataclass
class ModelInput:
    """The tensors of one flat batch, and which rows are sampled."""

    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor  # (S',) int64: the flat row whose logits each sampling request needs
    sample_request_ids: list[str]  # (S',) the request of each of those rows, in batch order

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]


class ModelRunner:
    """Runs a Llama-style model (forward(input_ids, positions, kv_caches, attn_metadata) -> hidden,
    compute_logits(hidden) -> logits) over the batches a scheduler plans."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device | str | None = None,
    ):
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be >= 1")
        self.model = model
        self.kv_caches = kv_caches  # per layer (k_cache, v_cache), each (num_blocks, block_size, Hkv, D)
        self.block_size = block_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        for k, v in kv_caches:
            assert k.shape[1] == block_size and k.shape == v.shape, (k.shape, v.shape, block_size)
            assert k.device.type == self.device.type, f"cache on {k.device}, model on {self.device}"

    def prepare_inputs(self, scheduled: Sequence[ScheduledRequest]) -> ModelInput:
        """The flat batch of one step. `scheduled` must be non-empty, each with num_new_tokens >= 1."""
        assert scheduled, "an empty step has no batch: check the scheduler output before running it"
        for s in scheduled:
            assert len(s.token_ids) == s.num_new_tokens, f"{s.request_id}: ids != num_new_tokens"
        meta = AttentionMetadata.build(
            [s.num_computed_tokens + s.num_new_tokens for s in scheduled],
            [s.num_new_tokens for s in scheduled],
            [s.block_table for s in scheduled],
            self.block_size,
            self.device,
        )
        qsl = meta.query_start_loc_list
        rows = [i for i, s in enumerate(scheduled) if s.sample]
        ids = list(chain.from_iterable(s.token_ids for s in scheduled))
        return ModelInput(
            input_ids=torch.tensor(ids, dtype=torch.int64, device=self.device),
            positions=meta.positions(),
            attn_metadata=meta,
            logits_indices=torch.tensor([qsl[i + 1] - 1 for i in rows], dtype=torch.int64, device=self.device),
            sample_request_ids=[scheduled[i].request_id for i in rows],
        )

    @torch.inference_mode()
    def execute_model(self, scheduled: Sequence[ScheduledRequest]) -> tuple[torch.Tensor, list[str]]:
        """Run one step: (logits (S', vocab) float32 of the sampling rows, their request ids)."""
        inp = self.prepare_inputs(scheduled)
        hidden = self.model(inp.input_ids, inp.positions, self.kv_caches, inp.attn_metadata)  # (T, hidden)
        if not inp.sample_request_ids:
            return hidden.new_empty((0, 0), dtype=torch.float32), []
        logits = self.model.compute_logits(hidden[inp.logits_indices])  # (S', vocab)
        return logits, inp.sample_request_ids


__all__ = ["ModelInput", "ModelRunner"]
