"""The engine: continuous batching that glues scheduler, paged KV cache, model and sampler together.

    engine = LLMEngine(model, tokenizer, EngineConfig(num_gpu_blocks=256))
    engine.add_request("The capital of France is", SamplingParams(temperature=0, max_tokens=16))
    while engine.has_unfinished_requests():
        for out in engine.step():          # one forward pass for every running request
            print(out.request_id, out.delta_text)

    llm = LLM("smollm2-135m-instruct")     # the facade, shaped like vLLM's
    outs = llm.generate(["Hi", "2 + 2 ="], SamplingParams(temperature=0, max_tokens=32))

One `step()`:
  1. `scheduler.schedule()` picks the running requests (a decode or the next prefill chunk each) and
     admits waiting ones with the token budget left, reserving KV slots (preempting if memory is out);
  2. `ModelRunner` runs ONE flat batch mixing prefills and decodes; the forward pass writes the K/V of
     every input token, including the token sampled last step (the lab text's §5.6 erred: ERRATA 12);
  3. `sampler.sample` draws a token for each request whose step reached its last known token;
  4. `scheduler.update_from_output` appends the tokens and stops requests at EOS, a stop token,
     max_tokens or max_model_len; the engine then detokenizes incrementally and ends requests whose
     text now contains a stop string (the text is cut before it);
  5. a `StepStats` row goes to `engine.timeline` and each request's `RequestMetrics` is updated.

The scheduler, KV cache and sampler are passed in as objects (or classes) that satisfy the small
protocols of `labkit.protocols`, so a student's class can replace the reference one.

Streaming: `stream()` yields text increments; joined, they equal the final text. While a request
has stop strings, the last len(longest stop) - 1 characters are held back, since they might turn
out to be the start of a stop string that is cut away.

What this does not do: parallel sampling (n > 1), beam search, logprobs, LoRA, multi-GPU, async
serving. Requests without a seed draw from torch's global generator (as in vLLM).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labkit import protocols
from labkit.kv_cache import PagedKVCache
from labkit.runner import ModelRunner
from labkit.sampler import Sampler, SamplingParams, make_generator
from labkit.scheduler import FinishReason, Request, Scheduler, SchedulerConfig

SMOLLM2_NAMES = ("smollm2-135m-instruct", "smollm2-135m-instruct-q4_1")
# The system message SmolLM2-Instruct's chat template adds when a conversation has none.
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_CPU_KV_BYTES = 256 * 2**20  # default KV budget on CPU: 256 MiB (SmolLM2-135M: ~5.8k tokens in fp32)


# ----------------------------------------------------------------------------------------------------
# configuration


@dataclass
class EngineConfig:
    """How big the KV cache is and how much one step may hold. Validated on construction."""

    block_size: int = 16  # tokens per KV block (vLLM's default): smaller wastes less, larger gathers less
    num_gpu_blocks: int | None = None  # KV blocks in all; None: as many as kv_cache_memory_bytes holds
    kv_cache_memory_bytes: int | None = None  # None: CUDA -> gpu_memory_utilization; CPU -> 256 MiB
    gpu_memory_utilization: float = 0.9  # CUDA: share of the device's memory this engine may fill
    max_num_seqs: int = 32  # requests in one batch
    max_num_batched_tokens: int = 2048  # new tokens in one step (decodes + prefill chunks)
    max_model_len: int | None = None  # prompt + output tokens; None: min(model's context, 2048)
    enable_prefix_caching: bool = True  # reuse the K/V of full blocks of an identical prefix
    enable_chunked_prefill: bool = True  # split long prompts over steps (else a prompt is one piece)
    scheduling_policy: str = "fcfs"  # or "shortest_prompt_first" (the lab's; can starve long prompts)
    device: str | torch.device | None = None  # None: the model's device
    dtype: str | torch.dtype | None = None  # model and KV cache dtype; None: the model's dtype

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            _check_positive_int(name, getattr(self, name))
        for name in ("num_gpu_blocks", "kv_cache_memory_bytes", "max_model_len"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.num_gpu_blocks is not None and self.kv_cache_memory_bytes is not None:
            raise ValueError(
                f"num_gpu_blocks={self.num_gpu_blocks} and kv_cache_memory_bytes="
                f"{self.kv_cache_memory_bytes} both size the KV cache: give only one of them"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization={self.gpu_memory_utilization!r} must lie in (0, 1]: "
                f"it is the share of the GPU's memory the engine may use, e.g. 0.9"
            )
        if self.scheduling_policy not in ("fcfs", "shortest_prompt_first"):
            raise ValueError(
                f"scheduling_policy={self.scheduling_policy!r} is unknown: use 'fcfs' or "
                f"'shortest_prompt_first'"
            )
        if self.device is not None:
            try:
                self.device = torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"device={self.device!r} is not a torch device: use 'cpu' or 'cuda'") from e
        if self.dtype is not None:
            self.dtype = _resolve_dtype(self.dtype)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported: use float32, bfloat16 or float16")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown: use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


# ----------------------------------------------------------------------------------------------------
# what the engine reports


@dataclass
class RequestMetrics:
    """Times (time.monotonic seconds) and counts of one request. Derived figures are properties."""

    arrival_time: float
    num_prompt_tokens: int
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at admission
    num_preemptions: int = 0

    @property
    def queue_time(self) -> float | None:
        """Seconds from arrival to the first step that ran it."""
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from arrival to the first output token (queue + prefill)."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def time_per_output_token(self) -> float | None:
        """Mean seconds between output tokens after the first (None with fewer than 2 tokens)."""
        if self.num_output_tokens < 2 or self.first_token_time is None:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_output_tokens - 1)

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class CompletionOutput:
    index: int
    text: str  # stop string (if any) cut off; special tokens left out
    token_ids: list[int]  # every sampled token, the EOS or stop token included
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it, if any


@dataclass
class RequestOutput:
    """What `step()` returns for a request that made progress, shaped like vLLM's."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    delta_text: str = ""  # text added since this request's previous output (for streaming)

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


@dataclass
class StepStats:
    """One row of the per-step timeline (for plots)."""

    step: int
    start_time: float  # seconds since the engine was created
    duration_s: float
    num_seqs: int  # requests in the batch
    num_prefill_tokens: int  # prompt (or recomputed) tokens run this step
    num_decode_tokens: int  # generated tokens fed back (1 per decoding request)
    num_sampled: int  # tokens sampled
    num_running: int  # requests holding blocks after scheduling
    num_waiting: int  # requests queued after scheduling
    num_blocks_used: int  # KV blocks held by requests after scheduling
    num_blocks_total: int
    num_preempted: int  # requests preempted while scheduling this step
    num_finished: int  # requests that finished in this step


# ----------------------------------------------------------------------------------------------------
# per-request state the engine keeps (the scheduler's Request holds the tokens)


class _PrefixDetokenizer:
    """Incremental decode for a tokenizer without one: decode everything, emit what is new and whole."""

    def __init__(self, tokenizer, skip_special: bool):
        self.tokenizer, self.skip_special, self.ids, self.emitted = tokenizer, skip_special, [], 0

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special)

    def feed(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self._text()
        if text.endswith("\ufffd"):  # a character still incomplete: wait for its other bytes
            return ""
        new, self.emitted = text[self.emitted :], len(text)
        return new

    def flush(self) -> str:
        text = self._text()
        new, self.emitted = text[self.emitted :], len(text)
        return new


@dataclass
class _RequestState:
    request: Any  # the scheduler's Request
    prompt: str | None
    params: Any  # SamplingParams (or an object alike)
    generator: torch.Generator | None
    metrics: RequestMetrics
    detokenizer: Any | None  # None: no tokenizer, text stays ""
    collect: bool  # keep the final output for generate()/stream() to pick up
    text: str = ""  # decoded so far (stop string cut off once found)
    emitted: int = 0  # characters of `text` already handed out as delta_text
    stop_reason: int | str | None = None
    stopped_by_string: bool = False

    @property
    def holdback(self) -> int:
        """Characters at the end of `text` not yet safe to hand out (they may begin a stop string)."""
        stops = getattr(self.params, "stop", None) or ()
        return max((len(s) for s in stops), default=1) - 1


# ----------------------------------------------------------------------------------------------------
# the engine


class LLMEngine:
    """Continuous batching over one model. Parts are replaceable (see labkit.protocols):

    scheduler: None (labkit's), a Scheduler-protocol object (its kv cache must be `kv_cache`), or a
               class / callable `(SchedulerConfig, kv_cache) -> scheduler`;
    kv_cache:  None (labkit's PagedKVCache sized by the config), a KVCache-protocol object, or a
               class / callable taking PagedKVCache's arguments (num_layers, num_kv_heads, head_dim,
               num_blocks, block_size, dtype, device, enable_prefix_caching);
    sampler:   None (labkit's Sampler) or any object with `sample(logits, params, generators)`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any | None = None,
        config: EngineConfig | None = None,
        *,
        scheduler: Any = None,
        kv_cache: Any = None,
        sampler: Any = None,
        eos_token_id: int | None = None,
        skip_special_tokens: bool = True,
    ):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.model_config = model.config
        config = config or EngineConfig()
        if config.max_model_len is None:  # a copy: the caller's config may serve other engines
            max_len = min(model.config.max_position_embeddings, 2048)
            config = dataclasses.replace(config, max_model_len=max_len)
        self.config = config
        self._check_model_placement(config)
        self.scheduler_config = SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=config.max_model_len,
            enable_chunked_prefill=config.enable_chunked_prefill,
            policy=config.scheduling_policy,
        )
        self.kv_cache = self._build_kv_cache(kv_cache, scheduler)
        self.scheduler = self._build_scheduler(scheduler)
        self.sampler = sampler if sampler is not None else Sampler()
        for part, proto in (
            (self.kv_cache, protocols.KVCache),
            (self.scheduler, protocols.Scheduler),
            (self.sampler, protocols.Sampler),
        ):
            check_protocol(part, proto)
        self.runner = ModelRunner(model, self.kv_cache.kv_caches, self.kv_cache.block_size, self.device)
        self.eos_token_id = eos_token_id if eos_token_id is not None else self._default_eos()
        self.skip_special_tokens = skip_special_tokens
        self.timeline: list[StepStats] = []
        self._states: dict[str, _RequestState] = {}  # unfinished requests
        self._collected: dict[str, RequestOutput] = {}  # finished outputs that generate()/stream() await
        self._ids = itertools.count()
        self._t0 = time.monotonic()

    # ---- construction ------------------------------------------------------------------------------

    def _check_model_placement(self, config: EngineConfig) -> None:
        param = next(self.model.parameters())
        if config.device is not None and torch.device(config.device).type != param.device.type:
            raise ValueError(
                f"EngineConfig.device={config.device} but the model is on {param.device}: "
                f"move the model first (model.to('{config.device}')) or leave device=None"
            )
        if config.dtype is not None and config.dtype != param.dtype:
            raise ValueError(
                f"EngineConfig.dtype={config.dtype} but the model's weights are {param.dtype}: "
                f"convert the model first (model.to({config.dtype})) or leave dtype=None"
            )
        self.device, self.dtype = param.device, param.dtype

    def _num_blocks(self) -> int:
        c, mc = self.config, self.model_config
        if c.num_gpu_blocks is not None:
            return c.num_gpu_blocks
        budget = c.kv_cache_memory_bytes
        if budget is None and self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = int(total * c.gpu_memory_utilization) - (total - free)  # what is left of our share
            if budget <= 0:
                raise ValueError(
                    f"gpu_memory_utilization={c.gpu_memory_utilization} leaves no memory for "
                    f"the KV cache ({(total - free) / 2**30:.1f} GiB of {total / 2**30:.1f} GiB "
                    f"already in use): raise it or set num_gpu_blocks"
                )
        budget = budget if budget is not None else _CPU_KV_BYTES
        per_block = PagedKVCache.bytes_per_block(
            mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, c.block_size, self.dtype
        )
        if budget < per_block:
            raise ValueError(
                f"a KV budget of {budget} bytes holds no block ({per_block} bytes each): "
                f"give more memory or set num_gpu_blocks"
            )
        return budget // per_block

    def _build_kv_cache(self, kv_cache: Any, scheduler: Any) -> Any:
        if kv_cache is None and scheduler is not None and not _is_factory(scheduler):
            kv_cache = getattr(scheduler, "kv_cache", None)
            if kv_cache is None:
                raise ValueError(
                    "a scheduler object was given without its kv cache: pass kv_cache= too "
                    "(the engine's model runner needs the same K/V tensors the scheduler fills)"
                )
        if kv_cache is not None and not _is_factory(kv_cache):
            return kv_cache
        mc, c = self.model_config, self.config
        make = kv_cache or PagedKVCache
        return make(
            mc.num_hidden_layers,
            mc.num_key_value_heads,
            mc.head_dim,
            self._num_blocks(),
            c.block_size,
            self.dtype,
            self.device,
            c.enable_prefix_caching,
        )

    def _build_scheduler(self, scheduler: Any) -> Any:
        if scheduler is None:
            return Scheduler(self.scheduler_config, self.kv_cache)
        if _is_factory(scheduler):
            return scheduler(self.scheduler_config, self.kv_cache)
        return scheduler

    def _default_eos(self) -> int | None:
        ids = self.model_config.eos_token_ids
        if ids:
            return ids[0]
        return getattr(self.tokenizer, "eos_token_id", None)

    # ---- requests ----------------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | Sequence[int],
        sampling_params: Any = None,
        request_id: str | None = None,
        arrival_time: float | None = None,
        *,
        _collect: bool = False,
    ) -> str:
        """Queue a request; returns its id. Raises ValueError (engine unchanged) for a request that is
        malformed or could never run: empty prompt, token ids outside the vocabulary, prompt + max_tokens
        over max_model_len, more KV blocks than the whole cache, bad sampling parameters."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        check_sampling_params(params)
        if request_id is None:
            request_id = str(next(self._ids))
            while request_id in self._states:
                request_id = str(next(self._ids))
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a str, got {type(request_id).__name__} {request_id!r}")
        if request_id in self._states:
            raise ValueError(f"request id {request_id!r} is already in use: give each request a unique id")
        text, token_ids = self._tokenize(prompt)
        if getattr(params, "stop", None) and self.tokenizer is None:
            raise ValueError(
                f"stop strings {params.stop!r} need a tokenizer to find them in the text: pass "
                f"tokenizer= to the engine or use stop_token_ids"
            )
        self._check_fits(request_id, token_ids, params)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        request = Request(request_id, token_ids, params, eos_token_id=self.eos_token_id, arrival_time=arrival)
        self.scheduler.add_request(request)
        seed = getattr(params, "seed", None)
        self._states[request_id] = _RequestState(
            request=request,
            prompt=text,
            params=params,
            generator=make_generator(seed, self.device),
            metrics=RequestMetrics(arrival_time=arrival, num_prompt_tokens=len(token_ids)),
            detokenizer=self._new_detokenizer(),
            collect=_collect,
        )
        return request_id

    def _tokenize(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(
                    "this engine has no tokenizer, so prompts must be lists of token ids: "
                    "pass tokenizer= to the engine or encode the prompt yourself"
                )
            if not prompt:
                raise ValueError("the prompt is empty (''): give at least one character")
            return prompt, encode_text(self.tokenizer, prompt)
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if not isinstance(prompt, Sequence) or isinstance(prompt, bytes):
            raise TypeError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")
        ids = list(prompt)
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(
                f"token id {bad[0]!r} is not in the model's vocabulary [0, {vocab}): encode the "
                f"prompt with this model's tokenizer"
            )
        return None, ids

    def _check_fits(self, request_id: str, token_ids: list[int], params: Any) -> None:
        n, max_len, block_size = len(token_ids), self.config.max_model_len, self.kv_cache.block_size
        if n == 0:
            raise ValueError(f"request {request_id!r}: the prompt has no tokens; give at least one")
        if n >= max_len:
            raise ValueError(
                f"request {request_id!r}: the prompt has {n} tokens, max_model_len={max_len} "
                f"leaves no room to generate: shorten the prompt or raise max_model_len"
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else max_len - n
        if n + max_tokens > max_len:
            raise ValueError(
                f"request {request_id!r}: prompt ({n} tokens) + max_tokens ({max_tokens}) = "
                f"{n + max_tokens} > max_model_len={max_len}: shorten the prompt, lower "
                f"max_tokens or raise max_model_len"
            )
        needed = -(-(n + max_tokens - 1) // block_size)  # the last sampled token is never written
        if needed > self.kv_cache.num_blocks:
            raise ValueError(
                f"request {request_id!r} may need {needed} KV blocks ({n} + {max_tokens} - 1 "
                f"tokens, block_size {block_size}) but the whole cache has "
                f"{self.kv_cache.num_blocks}: give the cache more blocks or memory, or shorten "
                f"the prompt or max_tokens"
            )

    def _new_detokenizer(self) -> Any | None:
        if self.tokenizer is None:
            return None
        if hasattr(self.tokenizer, "decode_bytes"):  # labkit's Tokenizer
            from labkit.tokenizer import IncrementalDetokenizer

            return IncrementalDetokenizer(self.tokenizer, skip_special=self.skip_special_tokens)
        return _PrefixDetokenizer(self.tokenizer, self.skip_special_tokens)

    def abort_request(self, request_id: str) -> RequestOutput:
        """Cancel an unfinished request (its blocks are freed); returns its final output."""
        if request_id not in self._states:
            raise KeyError(
                f"no unfinished request {request_id!r}: it was never added, or it already "
                f"finished or was aborted (unfinished: {sorted(self._states)[:10]})"
            )
        self.scheduler.abort_request(request_id)
        return self._finish(self._states[request_id], "abort", time.monotonic())

    abort = abort_request

    def has_unfinished_requests(self) -> bool:
        return bool(self._states)

    def get_num_unfinished_requests(self) -> int:
        return len(self._states)

    # ---- one step ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Schedule, run one flat batch, sample, update. Returns an output for every request that got a
        token or finished in this step."""
        t_start = time.monotonic()
        sched_out = self.scheduler.schedule()
        scheduled = list(sched_out.scheduled)
        blocks_used = self.kv_cache.num_blocks - self.kv_cache.num_free_blocks  # what this step holds
        sampled: dict[str, int] = {}
        if scheduled:
            logits, ids = self.runner.execute_model(scheduled)
            if ids:
                states = [self._states[i] for i in ids]
                tokens = self.sampler.sample(
                    logits, [s.params for s in states], [s.generator for s in states]
                )
                sampled = dict(zip(ids, (int(t) for t in tokens.tolist())))
        now = time.monotonic()
        self._note_scheduled(sched_out, scheduled, t_start)
        finished = {r.request_id for r in self.scheduler.update_from_output(sched_out, sampled)}
        outputs = []
        for rid, token_id in sampled.items():
            state = self._states[rid]
            out = self._on_token(state, token_id, now, rid in finished)
            finished.discard(rid)
            outputs.append(out)
        for rid in finished:  # finished without a token this step (a student scheduler may do that)
            if rid in self._states:
                outputs.append(self._finish(self._states[rid], self._finish_reason(rid), now))
        self._record_step(
            t_start, scheduled, sched_out, blocks_used, len(sampled), sum(o.finished for o in outputs)
        )
        return outputs

    def _note_scheduled(self, sched_out: Any, scheduled: list, t_start: float) -> None:
        for rid in sched_out.preempted_request_ids:
            if rid in self._states:
                self._states[rid].metrics.num_preemptions += 1
        for s in scheduled:
            m = self._states[s.request_id].metrics
            if m.first_scheduled_time is None:
                m.first_scheduled_time = t_start
                m.num_cached_tokens = getattr(self._states[s.request_id].request, "num_cached_tokens", 0)

    def _on_token(self, state: _RequestState, token_id: int, now: float, finished: bool) -> RequestOutput:
        """Record one sampled token: metrics, incremental text, stop strings."""
        m = state.metrics
        m.num_output_tokens += 1
        m.first_token_time = m.first_token_time or now
        m.last_token_time = now
        if state.detokenizer is not None and not state.stopped_by_string:
            state.text += state.detokenizer.feed(token_id)
            if finished:
                state.text += state.detokenizer.flush()
            self._check_stop_strings(state)
        if state.stopped_by_string and not finished:
            self.scheduler.finish_request(state.request.request_id, FinishReason.STOP)
            finished = True
        if finished:
            return self._finish(state, self._finish_reason(state.request.request_id), now)
        return self._output(state, finished=False)

    def _check_stop_strings(self, state: _RequestState) -> None:
        stops = getattr(state.params, "stop", None) or ()
        if not stops:
            return
        start = max(0, state.emitted - max(len(s) for s in stops))  # only new text can complete a stop
        hits = [(state.text.find(s, start), s) for s in stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            i, s = min(hits)
            state.text, state.stop_reason, state.stopped_by_string = state.text[:i], s, True

    def _finish_reason(self, request_id: str) -> str:
        state = self._states[request_id]
        if state.stopped_by_string:
            return "stop"
        reason = getattr(state.request, "finish_reason", None)
        reason = getattr(reason, "value", reason)
        last = state.request.output_token_ids[-1:]
        if reason == "stop" and last and last[0] in (getattr(state.params, "stop_token_ids", None) or ()):
            state.stop_reason = last[0]  # a stop token (EOS leaves stop_reason None, as in vLLM)
        return reason or "stop"

    def _finish(self, state: _RequestState, reason: str, now: float) -> RequestOutput:
        rid = state.request.request_id
        state.metrics.finished_time = now
        out = self._output(state, finished=True, reason=reason)
        del self._states[rid]
        if state.collect:
            self._collected[rid] = out
        return out

    def _output(self, state: _RequestState, finished: bool, reason: str | None = None) -> RequestOutput:
        visible = len(state.text) if finished else max(state.emitted, len(state.text) - state.holdback)
        delta, state.emitted = state.text[state.emitted : visible], visible
        req = state.request
        completion = CompletionOutput(
            0,
            state.text[:visible],
            list(req.output_token_ids),
            reason,
            state.stop_reason if finished else None,
        )
        return RequestOutput(
            req.request_id,
            state.prompt,
            req.prompt_token_ids,  # shared, not copied: nothing changes a prompt once queued
            [completion],
            finished,
            state.metrics,
            delta,
        )

    def _record_step(
        self,
        t_start: float,
        scheduled: list,
        sched_out: Any,
        blocks_used: int,
        num_sampled: int,
        num_finished: int,
    ) -> None:
        prefill = decode = 0
        for s in scheduled:
            request = s.request if hasattr(s, "request") else self._states[s.request_id].request
            if s.num_new_tokens == 1 and s.num_computed_tokens >= len(request.prompt_token_ids):
                decode += 1
            else:
                prefill += s.num_new_tokens
        kv = self.kv_cache
        self.timeline.append(
            StepStats(
                step=len(self.timeline),
                start_time=t_start - self._t0,
                duration_s=time.monotonic() - t_start,
                num_seqs=len(scheduled),
                num_prefill_tokens=prefill,
                num_decode_tokens=decode,
                num_sampled=num_sampled,
                num_running=len(getattr(self.scheduler, "running", scheduled)),
                num_waiting=len(getattr(self.scheduler, "waiting", ())),
                num_blocks_used=blocks_used,
                num_blocks_total=kv.num_blocks,
                num_preempted=len(sched_out.preempted_request_ids),
                num_finished=num_finished,
            )
        )

    # ---- batch helpers -----------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        sampling_params: Any | Sequence[Any] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run prompts to completion (together with anything already queued); outputs in prompt order.

        sampling_params: one for all prompts, or a list with one per prompt. A prompt that is rejected
        raises before any of them runs (the ones already queued are withdrawn)."""
        prompts = normalize_prompts(prompts)
        params = _params_per_prompt(sampling_params, len(prompts))
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                ids.append(self.add_request(prompt, p, _collect=True))
        except Exception:
            for rid in ids:
                self.abort_request(rid)
                self._collected.pop(rid, None)
            raise
        return self._run_until_done(ids, use_tqdm)

    def _run_until_done(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        from tqdm.auto import tqdm

        pending, t0, num_tokens = set(ids), time.monotonic(), 0
        with tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True) as bar:
            while pending:
                outputs = self.step()
                if self.timeline[-1].num_seqs == 0 and any(rid in self._states for rid in pending):
                    raise RuntimeError(
                        f"the scheduler ran nothing while {len(self._states)} requests are "
                        f"unfinished: it is stuck (a request that never fits?)"
                    )
                num_tokens += sum(len(o.token_ids) for o in outputs if o.finished)
                done = {rid for rid in pending if rid in self._collected}  # finished or aborted
                pending -= done
                bar.update(len(done))
                bar.set_postfix(output_tok_s=f"{num_tokens / (time.monotonic() - t0):.1f}")
        return [self._collected.pop(rid) for rid in ids]

    def stream(
        self, prompt: str | Sequence[int], sampling_params: Any = None, request_id: str | None = None
    ) -> Iterator[str]:
        """Yield a request's text as it is generated; the pieces joined equal its final text.
        Stepping the engine also advances every other queued request. Closing the iterator early
        aborts the request."""
        rid = self.add_request(prompt, sampling_params, request_id)
        try:
            while rid in self._states:
                for out in self.step():
                    if out.request_id == rid and out.delta_text:
                        yield out.delta_text
        finally:
            if rid in self._states:
                self.abort_request(rid)

    # ---- statistics --------------------------------------------------------------------------------

    def timeline_columns(self) -> dict[str, list]:
        """The timeline as columns {field: [value per step]}, ready for plotting or a DataFrame."""
        names = list(StepStats.__dataclass_fields__)
        return {n: [getattr(s, n) for s in self.timeline] for n in names}

    def reset_timeline(self) -> None:
        self.timeline.clear()
        self._t0 = time.monotonic()


# ----------------------------------------------------------------------------------------------------
# helpers


def _is_factory(obj: Any) -> bool:
    """A class or function to call to build a part, as opposed to a ready object."""
    return isinstance(obj, (type, functools.partial)) or inspect.isroutine(obj)


def check_protocol(obj: Any, protocol: type) -> None:
    """TypeError naming what `obj` lacks to serve as `protocol` (see labkit.protocols)."""
    missing = protocols.missing_members(obj, protocol)
    if missing:
        raise TypeError(
            f"{type(obj).__name__} cannot serve as a {protocol.__name__}: it lacks {missing}. "
            f"Fix: implement them (see labkit.protocols.{protocol.__name__})"
        )


def check_sampling_params(params: Any) -> None:
    """ValueError for sampling parameters the engine cannot honour (SamplingParams checks the same on
    construction; this catches duck-typed objects and fields changed afterwards)."""
    for name in ("temperature", "top_k", "top_p", "max_tokens"):
        if not hasattr(params, name):
            raise TypeError(f"sampling params {params!r} lack `{name}`: pass a labkit.sampler.SamplingParams")
    t, k, p, n = params.temperature, params.top_k, params.top_p, params.max_tokens
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"max_tokens={n!r} must be an int >= 1 (a request generates at least one token)")
    if not isinstance(t, (int, float)) or not t >= 0:
        raise ValueError(f"temperature={t!r} must be >= 0 (0 = greedy): use 0 or a value such as 0.7")
    if not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"top_p={p!r} must lie in (0, 1]: use 1.0 to turn nucleus sampling off")
    if isinstance(k, bool) or not isinstance(k, int) or not (k == -1 or k >= 1):
        raise ValueError(f"top_k={k!r} must be -1 (off) or an int >= 1")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt. Special tokens written in the text (<|im_start|> ...) become their ids,
    as with Hugging Face tokenizers, so a chat-formatted prompt encodes as the model expects."""
    if hasattr(tokenizer, "decode_bytes"):  # labkit's Tokenizer
        return tokenizer.encode(text, allowed_special="all")
    return list(tokenizer.encode(text, add_special_tokens=False))


def normalize_prompts(prompts: Any) -> list[str | list[int]]:
    """One prompt (a str or a list of ids) or a list of prompts -> a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if not isinstance(prompts, Sequence):
        raise TypeError(
            f"prompts must be a str, a list of token ids, or a list of those; got {type(prompts).__name__}"
        )
    if prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        return [list(prompts)]
    if not prompts:
        raise ValueError("no prompts given: pass a str, a list of token ids, or a non-empty list of those")
    return [p.tolist() if isinstance(p, torch.Tensor) else p for p in prompts]


def _params_per_prompt(params: Any, n: int) -> list[Any]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, (list, tuple)):
        if len(params) != n:
            raise ValueError(f"got {len(params)} SamplingParams for {n} prompts: pass one, or one per prompt")
        return list(params)
    return [params] * n


def apply_chat_template(
    messages: str | Sequence[dict[str, str]],
    add_generation_prompt: bool = True,
    default_system_prompt: str | None = SMOLLM2_SYSTEM_PROMPT,
) -> str:
    """A conversation in ChatML, the format SmolLM2-Instruct was trained on:

        <|im_start|>system\\n{system}<|im_end|>\\n
        <|im_start|>user\\n{question}<|im_end|>\\n
        <|im_start|>assistant\\n          (one string; broken here to fit)

    messages: a list of {"role": ..., "content": ...} (or one user message as a str). As SmolLM2's own
    template does, a conversation that does not open with a system message gets `default_system_prompt`
    (None: no system message)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not messages:
        raise ValueError("the conversation is empty: give at least one {'role': 'user', 'content': ...}")
    parts = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(
                f"message {i} is {m!r}: each message must be a dict with str 'role' and 'content'"
            )
    if messages[0]["role"] != "system" and default_system_prompt is not None:
        parts.append(f"<|im_start|>system\n{default_system_prompt}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------------
# the facade


def load_model(
    model: str | os.PathLike | torch.nn.Module,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Any]:
    """(labkit model, tokenizer) from a name, a .gguf path, a Hugging Face folder or a loaded model."""
    from labkit import model as lm

    if isinstance(model, torch.nn.Module):
        if not isinstance(model, lm.LlamaForCausalLM):  # a transformers model: copy its weights
            model = lm.from_hf_model(model, dtype=dtype).to(device)
        return model, tokenizer
    name = os.fspath(model)
    if name.lower() in SMOLLM2_NAMES:
        from labkit import assets

        path = assets.path(lm.GGUF_ASSET)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"model={name!r} is neither a known name ({', '.join(SMOLLM2_NAMES)}) nor "
                f"an existing .gguf file or Hugging Face folder"
            )
    if path.is_dir():
        loaded = lm.from_hf_dir(path, dtype=dtype, device=device)
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        if tokenizer is None and has_tokenizer:  # otherwise no tokenizer: prompts must be token ids
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return loaded, tokenizer
    loaded, _ = lm.load_gguf(path, dtype=dtype, device=device)
    if tokenizer is None:
        from labkit.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_gguf(path)
    return loaded, tokenizer


class LLM:
    """vLLM-shaped facade: `LLM(model=...).generate(prompts, SamplingParams(...))`.

    model: "smollm2-135m-instruct" (the GGUF asset), a path to a .gguf file or a Hugging Face folder,
    a labkit LlamaForCausalLM, or a transformers Llama/Qwen model (its weights are copied). Keyword
    arguments other than tokenizer are EngineConfig fields (block_size, num_gpu_blocks, max_num_seqs,
    ...) or the engine's parts (scheduler=, kv_cache=, sampler=)."""

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module = "smollm2-135m-instruct",
        tokenizer: Any = None,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        scheduler: Any = None,
        kv_cache: Any = None,
        sampler: Any = None,
        **engine_config: Any,
    ):
        unknown = set(engine_config) - set(EngineConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"LLM got unknown arguments {sorted(unknown)}: EngineConfig fields are "
                f"{sorted(EngineConfig.__dataclass_fields__)}"
            )
        config = EngineConfig(dtype=dtype, device=device, **engine_config)
        if isinstance(model, torch.nn.Module):
            loaded, tokenizer = load_model(
                model,
                tokenizer,
                config.dtype or next(model.parameters()).dtype,
                config.device or next(model.parameters()).device,
            )
        else:
            loaded, tokenizer = load_model(
                model, tokenizer, config.dtype or torch.float32, config.device or "cpu"
            )
        self.llm_engine = LLMEngine(
            loaded, tokenizer, config, scheduler=scheduler, kv_cache=kv_cache, sampler=sampler
        )

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def generate(
        self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True
    ) -> list[RequestOutput]:
        """Outputs in prompt order. prompts: a str, a list of token ids, or a list of those."""
        return self.llm_engine.generate(prompts, sampling_params, use_tqdm)

    def chat(
        self,
        messages: Any,
        sampling_params: Any = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """One conversation (a list of message dicts, or a str) or a list of conversations."""
        convs = (
            [messages]
            if isinstance(messages, str) or (messages and isinstance(messages[0], dict))
            else messages
        )
        prompts = [apply_chat_template(c, add_generation_prompt) for c in convs]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(self, prompt: str | Sequence[int], sampling_params: Any = None) -> Iterator[str]:
        return self.llm_engine.stream(prompt, sampling_params)

    @staticmethod
    def apply_chat_template(messages: Any, add_generation_prompt: bool = True) -> str:
        return apply_chat_template(messages, add_generation_prompt)


__all__ = [
    "CompletionOutput",
    "EngineConfig",
    "LLM",
    "LLMEngine",
    "RequestMetrics",
    "RequestOutput",
    "SMOLLM2_SYSTEM_PROMPT",
    "StepStats",
    "apply_chat_template",
    "check_protocol",
    "check_sampling_params",
    "encode_text",
    "load_model",
    "normalize_prompts",
]
