"""ModelRunner: one scheduler step -> one flat batch -> one forward pass -> logits of the rows that sample.

The scheduler says, for each request in the step, which of its tokens to compute
(`num_computed_tokens .. num_computed_tokens + num_new_tokens - 1`) and which physical blocks hold
its context. The runner turns that into the tensors of ONE flat batch, with no padding:

    input_ids        (T,)   int64   the new tokens of every request, concatenated in batch order
    positions        (T,)   int64   each token's position in its own sequence
    slot_mapping     (T,)   int64   where each token's K/V is written: block_table[p // B] * B + p % B
    query_start_loc  (S+1,) int32   request i owns rows query_start_loc[i] : query_start_loc[i + 1]
    seq_lens         (S,)   int32   context length after this step (computed + new)
    block_tables     (S, M) int32   physical block ids, padded with -1

A decode (1 row), a whole prefill, a prefill chunk and a prefill over a cached prefix are all the same
thing here, so one batch mixes them freely (ERRATA 12: no whole-batch prefill-or-decode switch).

The forward pass writes the K/V of every input token into the cache. The token sampled at the end of
this step is NOT written now: it is an input token of the NEXT step, whose forward pass writes it.

Logits are computed only for the last row of each request whose `sample` is True (a partial prefill
chunk has nothing to sample), so the (T, hidden) x (hidden, vocab) product shrinks to (S', vocab).

Everything is built per step with a handful of list concatenations and vectorized torch ops; nothing
loops over tokens in Python. What this does not do: CUDA graphs, pinned-memory staging, persistent
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
        B = self.block_size
        q_lens = [s.num_new_tokens for s in scheduled]  # (S,)
        starts = [s.num_computed_tokens for s in scheduled]  # (S,) first position computed this step
        seq_lens = [c + q for c, q in zip(starts, q_lens)]
        for s, q in zip(scheduled, q_lens):
            assert q >= 1 and len(s.token_ids) == q, f"{s.request_id}: {len(s.token_ids)} ids for {q} rows"
            assert len(s.block_table) * B >= s.num_computed_tokens + q, f"{s.request_id}: table too short"
        qsl = [0]
        for q in q_lens:
            qsl.append(qsl[-1] + q)
        T, S = qsl[-1], len(scheduled)
        width = max(len(s.block_table) for s in scheduled)
        tables = [list(s.block_table) + [-1] * (width - len(s.block_table)) for s in scheduled]

        input_ids = torch.tensor(list(chain.from_iterable(s.token_ids for s in scheduled)), dtype=torch.int64)
        block_tables = torch.tensor(tables, dtype=torch.int32).view(S, width)  # (S, M)
        q_lens_t = torch.tensor(q_lens, dtype=torch.int64)  # (S,)
        seq_idx = torch.repeat_interleave(torch.arange(S), q_lens_t)  # (T,) which request owns each row
        # position of row r = start of its request + (r - first row of its request)
        offset = torch.tensor(starts, dtype=torch.int64) - torch.tensor(qsl[:-1], dtype=torch.int64)  # (S,)
        positions = torch.arange(T, dtype=torch.int64) + offset[seq_idx]  # (T,)
        blocks = block_tables[seq_idx, positions // B].to(torch.int64)  # (T,) physical block of each row
        slot_mapping = blocks * B + positions % B  # (T,)
        assert T == 0 or int(blocks.min()) >= 0, "a position falls outside its request's block table"

        rows = [i for i, s in enumerate(scheduled) if s.sample]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=slot_mapping.to(dev),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=block_tables.to(dev),
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
            query_start_loc_list=qsl,
            seq_lens_list=seq_lens,
        )
        return ModelInput(
            input_ids=input_ids.to(dev),
            positions=positions.to(dev),
            attn_metadata=meta,
            logits_indices=torch.tensor([qsl[i + 1] - 1 for i in rows], dtype=torch.int64, device=dev),
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
