"""The engine: continuous batching that glues scheduler, paged KV cache, model and sampler together.

    engine = LLMEngine(model, tokenizer, EngineConfig(num_gpu_blocks=256))
    engine.add_request("The capital of France is", SamplingParams(temperature=0, max_tokens=16))
    while engine.has_unfinished_requests():
        for out in engine.step():          # one forward pass for every running request
            print(out.request_id, out.delta_text)

One `step()`:
  1. `scheduler.schedule()` picks the running requests (a decode or the next prefill chunk each) and
     admits waiting ones with the token budget left, reserving KV slots (preempting if memory is out);
  2. `ModelRunner` runs ONE flat batch mixing prefills and decodes; the forward pass writes the K/V of
     every input token, including the token sampled in the previous step (a sampled token's K/V is
     written when it is fed back in, not right after it is sampled);
  3. `sampler.sample` draws a token for each request whose step reached its last known token;
  4. `scheduler.update_from_output` appends the tokens and stops requests at EOS, a stop token,
     max_tokens or max_model_len; each request's `RequestText` (labkit.outputs) then detokenizes
     incrementally, and a stop string found there ends the request (the text is cut before it);
  5. a `StepStats` row goes to `engine.timeline` (labkit.metrics).

The scheduler, KV cache and sampler are passed in as objects (or classes) that satisfy the small
protocols of `labkit.protocols`, and the engine uses only what those protocols name, so a student's
class can replace the reference one. Who owns which rule: SamplingParams validates sampling
parameters; the scheduler decides admission (empty prompt, duplicate id, max_model_len, blocks
needed); PagedKVCache sizes the cache from a memory budget; the request's record (its tokens, times,
finish reason) is the scheduler's `Request`. The facade `LLM` is in labkit.llm.

What this does not do: parallel sampling (n > 1), beam search, logprobs, LoRA, multi-GPU, async
serving. Requests without a seed draw from torch's global generator (as in vLLM).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from labkit import protocols
from labkit.cuda_runner import CUDA_MAX_NUM_BATCHED_TOKENS, CUDA_MAX_NUM_SEQS, kv_cache_budget, make_runner
from labkit.kv_cache import PagedKVCache
from labkit.metrics import StepStats, timeline_columns
from labkit.outputs import RequestOutput, RequestText, new_detokenizer
from labkit.sampler import Sampler, SamplingParams, make_generator
from labkit.scheduler import FinishReason, Request, RequestStatus, Scheduler, SchedulerConfig

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
_CPU_KV_BYTES = 256 * 2**20  # default KV budget on CPU: 256 MiB (SmolLM2-135M: ~5.8k tokens in fp32)


@dataclass
class EngineConfig:
    """How big the KV cache is and how much one step may hold. Validated on construction: the cache
    fields here, the batch fields by the SchedulerConfig built from them (`scheduler_config`)."""

    block_size: int = 16  # tokens per KV block (vLLM's default): smaller wastes less, larger gathers less
    num_gpu_blocks: int | None = None  # KV blocks in all; None: as many as kv_cache_memory_bytes holds
    kv_cache_memory_bytes: int | None = None  # None: CUDA -> gpu_memory_utilization; CPU -> 256 MiB
    gpu_memory_utilization: float = 0.9  # CUDA: share of the device's memory this engine may fill
    max_num_seqs: int | None = None  # requests in one batch; None: 256 on CUDA, 32 elsewhere
    max_num_batched_tokens: int | None = None  # new tokens in one step; None: 8192 on CUDA, 2048 elsewhere
    max_model_len: int | None = None  # prompt + output tokens; None: min(model's context, 2048)
    enable_prefix_caching: bool = True  # reuse the K/V of full blocks of an identical prefix
    enable_chunked_prefill: bool = True  # split long prompts over steps (else a prompt is one piece)
    scheduling_policy: str = "fcfs"  # or "shortest_prompt_first" (can starve long prompts)
    device: str | torch.device | None = None  # None: the model's device
    dtype: str | torch.dtype | None = None  # model and KV cache dtype; None: the model's dtype
    enforce_eager: bool = False  # CUDA: run every step op by op (no CUDA graphs for decode steps)
    scheduler_config: SchedulerConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("block_size", "num_gpu_blocks", "kv_cache_memory_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if self.num_gpu_blocks is not None and self.kv_cache_memory_bytes is not None:
            raise ValueError(f"num_gpu_blocks={self.num_gpu_blocks} and kv_cache_memory_bytes="
                             f"{self.kv_cache_memory_bytes} both size the KV cache: give only one of them")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization!r} must lie in (0, 1]: "
                             f"it is the share of the GPU's memory the engine may use, e.g. 0.9")
        cuda = self.device is not None and _resolve_device(self.device).type == "cuda"
        self.scheduler_config = SchedulerConfig(
            max_num_seqs=_default(self.max_num_seqs, CUDA_MAX_NUM_SEQS if cuda else 32),
            max_num_batched_tokens=_default(self.max_num_batched_tokens, CUDA_MAX_NUM_BATCHED_TOKENS if cuda else 2048),
            max_model_len=self.max_model_len,
            enable_chunked_prefill=self.enable_chunked_prefill,
            policy=self.scheduling_policy,
        )
        self.device = None if self.device is None else _resolve_device(self.device)
        self.dtype = None if self.dtype is None else _resolve_dtype(self.dtype)


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device: use 'cpu' or 'cuda'") from e


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    resolved = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in _DTYPES.values():
        raise ValueError(f"dtype={dtype!r} is not supported: use one of {sorted(_DTYPES)}")
    return resolved


@dataclass
class _RequestState:
    """What the engine adds to a request while it runs; the tokens and times are on `request`."""

    request: Request
    generator: torch.Generator | None
    text: RequestText
    collect: bool  # keep the final output for generate() to pick up


class LLMEngine:
    """Continuous batching over one model. Parts are replaceable (see labkit.protocols):

    scheduler: None (labkit's), a Scheduler-protocol object (its kv cache must be `kv_cache`), or a
               class / callable `(SchedulerConfig, kv_cache) -> scheduler`;
    kv_cache:  None (labkit's PagedKVCache sized by the config), a KVCache-protocol object, or a
               class / callable taking PagedKVCache's arguments (num_layers, num_kv_heads, head_dim,
               num_blocks, block_size, dtype, device, enable_prefix_caching);
    sampler:   None (labkit's Sampler) or any object with `sample(logits, params, generators)`;
    runner:    None (labkit's: CUDA graphs on CUDA, else ModelRunner) or a callable
               `(model, kv_cache, device) -> runner` with `execute_model(scheduled)`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any | None = None, config: EngineConfig | None = None, *,
                 scheduler: Any = None, kv_cache: Any = None, sampler: Any = None, runner: Any = None,
                 eos_token_id: int | None = None, skip_special_tokens: bool = True):
        self.model, self.tokenizer, self.model_config = model.eval(), tokenizer, model.config
        config = config or EngineConfig()
        if config.max_model_len is None:  # a copy: the caller's config may serve other engines
            config = dataclasses.replace(config, max_model_len=min(model.config.max_position_embeddings, 2048))
        if config.device is None:  # the batch limits' defaults depend on it
            config = dataclasses.replace(config, device=next(model.parameters()).device)
        self.config, self.scheduler_config = config, config.scheduler_config
        self.device, self.dtype = self._check_model_placement(config)
        self.kv_cache = self._build_kv_cache(kv_cache, scheduler)
        self.scheduler = self._build_scheduler(scheduler)
        self.sampler = sampler if sampler is not None else Sampler()
        check_protocol(self.kv_cache, protocols.KVCache)
        check_protocol(self.scheduler, protocols.Scheduler)
        check_protocol(self.sampler, protocols.Sampler)
        self.runner = (runner(model, self.kv_cache, self.device) if runner is not None else
                       make_runner(model, self.kv_cache, self.device, config, self.scheduler_config.max_num_seqs))
        check_protocol(self.runner, protocols.ModelRunner)
        eos = model.config.eos_token_ids or [getattr(tokenizer, "eos_token_id", None)]
        self.eos_token_id = eos_token_id if eos_token_id is not None else eos[0]
        self.skip_special_tokens = skip_special_tokens
        self.timeline: list[StepStats] = []
        self._states: dict[str, _RequestState] = {}  # unfinished requests
        self._collected: dict[str, RequestOutput] = {}  # finished outputs that generate() awaits
        self._ids = itertools.count()
        self._t0 = time.monotonic()

    # ---- construction ------------------------------------------------------------------------------

    def _check_model_placement(self, config: EngineConfig) -> tuple[torch.device, torch.dtype]:
        param = next(self.model.parameters())
        if config.device is not None and config.device.type != param.device.type:
            raise ValueError(f"EngineConfig.device={config.device} but the model is on {param.device}: "
                             f"move the model first (model.to('{config.device}')) or leave device=None")
        if config.dtype is not None and config.dtype != param.dtype:
            raise ValueError(f"EngineConfig.dtype={config.dtype} but the model's weights are {param.dtype}: "
                             f"convert the model first (model.to({config.dtype})) or leave dtype=None")
        return param.device, param.dtype

    def _kv_budget(self) -> int:
        """Bytes the KV cache may take: the config's, else what is left of our GPU share, else 256 MiB."""
        c = self.config
        if c.kv_cache_memory_bytes is not None or self.device.type != "cuda":
            return c.kv_cache_memory_bytes or _CPU_KV_BYTES
        sc = self.scheduler_config  # what is left of our share after a warm-up forward of the largest step
        return kv_cache_budget(self.model, c.block_size, sc.max_num_batched_tokens, sc.max_num_seqs, c.max_model_len,
                               c.gpu_memory_utilization)

    def _build_kv_cache(self, kv_cache: Any, scheduler: Any) -> Any:
        if kv_cache is None and scheduler is not None and not _is_factory(scheduler):
            raise ValueError("a scheduler object was given without its kv cache: pass kv_cache= too "
                             "(the engine's model runner needs the same K/V tensors the scheduler fills)")
        if kv_cache is not None and not _is_factory(kv_cache):
            return kv_cache
        mc, c = self.model_config, self.config
        shape = (mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim)
        num_blocks = c.num_gpu_blocks or PagedKVCache.blocks_in_budget(
            self._kv_budget(), *shape, c.block_size, self.dtype
        )
        make = kv_cache or PagedKVCache
        return make(*shape, num_blocks, c.block_size, self.dtype, self.device, c.enable_prefix_caching)

    def _build_scheduler(self, scheduler: Any) -> Any:
        if scheduler is None or _is_factory(scheduler):
            return (scheduler or Scheduler)(self.scheduler_config, self.kv_cache)
        return scheduler

    # ---- requests ----------------------------------------------------------------------------------

    def add_request(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None = None,
                    request_id: str | None = None, arrival_time: float | None = None, *, _collect: bool = False) -> str:
        """Queue a request; returns its id. Raises (engine unchanged) for a prompt that is not text or
        token ids of this model, and, through the scheduler, for a request that could never run."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be a labkit SamplingParams, got {type(params).__name__}")
        if params.stop and self.tokenizer is None:
            raise ValueError(f"stop strings {params.stop!r} need a tokenizer to find them in the text: pass "
                             f"tokenizer= to the engine or use stop_token_ids")
        if request_id is None:
            request_id = next(rid for rid in map(str, self._ids) if rid not in self._states)
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a str, got {type(request_id).__name__} {request_id!r}")
        text, token_ids = self._tokenize(prompt)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        request = Request(request_id, token_ids, params, eos_token_id=self.eos_token_id, arrival_time=arrival)
        self.scheduler.add_request(request)  # the admission rules live there
        detokenizer = new_detokenizer(self.tokenizer, self.skip_special_tokens)
        self._states[request_id] = _RequestState(
            request, make_generator(params.seed, self.device), RequestText(text, params.stop, detokenizer), _collect
        )
        return request_id

    def _tokenize(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer, so prompts must be lists of token ids: "
                                 "pass tokenizer= to the engine or encode the prompt yourself")
            if not prompt:
                raise ValueError("the prompt is empty (''): give at least one character")
            return prompt, encode_text(self.tokenizer, prompt)
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if not isinstance(prompt, Sequence) or isinstance(prompt, bytes):
            raise TypeError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]!r} is not in the model's vocabulary [0, {vocab}): encode the "
                             f"prompt with this model's tokenizer")
        return None, list(prompt)

    def abort_request(self, request_id: str) -> RequestOutput:
        """Cancel an unfinished request (its blocks are freed); returns its final output."""
        if request_id not in self._states:
            raise KeyError(f"no unfinished request {request_id!r}: it was never added, or it already "
                           f"finished or was aborted (unfinished: {sorted(self._states)[:10]})")
        self.scheduler.abort_request(request_id)
        return self._final_output(self._states[request_id])

    def has_unfinished_requests(self) -> bool:
        return bool(self._states)

    # ---- one step ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Schedule, run one flat batch, sample, update. Returns an output for every request that got a
        token or finished in this step (for the requests of generate(): only when they finish)."""
        t_start = time.monotonic()
        sched_out = self.scheduler.schedule()
        scheduled = list(sched_out.scheduled)
        row = self._scheduled_stats(scheduled, sched_out.preempted_request_ids, t_start)
        sampled: dict[str, int] = {}
        if scheduled:
            logits, ids = self.runner.execute_model(scheduled)
            if ids:
                states = [self._states[i] for i in ids]
                tokens = self.sampler.sample(
                    logits, [s.request.sampling_params for s in states], [s.generator for s in states]
                )
                sampled = dict(zip(ids, tokens.tolist()))
        finished = {r.request_id for r in self.scheduler.update_from_output(sched_out, sampled)}
        outputs = [out for rid, tok in sampled.items()
                   if (out := self._on_token(self._states[rid], tok, rid in finished)) is not None]
        for rid in finished - sampled.keys():  # finished without a token (a student scheduler may)
            outputs.append(self._final_output(self._states[rid]))
        self.timeline.append(StepStats(**row, duration_s=time.monotonic() - t_start, num_sampled=len(sampled),
                                       num_finished=sum(o.finished for o in outputs)))
        return outputs

    def _scheduled_stats(self, scheduled: list, preempted: Sequence[str], t_start: float) -> dict[str, Any]:
        """The timeline fields known once the step is scheduled (the rest come after it ran)."""
        decode = sum(
            s.num_new_tokens == 1 and s.num_computed_tokens >= self._states[s.request_id].request.num_prompt_tokens
            for s in scheduled
        )
        running = sum(s.request.status == RequestStatus.RUNNING for s in self._states.values())
        return dict(step=len(self.timeline), start_time=t_start - self._t0, num_seqs=len(scheduled),
                    num_prefill_tokens=sum(s.num_new_tokens for s in scheduled) - decode, num_decode_tokens=decode,
                    num_running=running, num_waiting=len(self._states) - running,
                    num_blocks_used=self.kv_cache.num_blocks - self.kv_cache.num_free_blocks,
                    num_blocks_total=self.kv_cache.num_blocks, num_preempted=len(preempted))

    def _on_token(self, state: _RequestState, token_id: int, finished: bool) -> RequestOutput | None:
        """Decode a sampled token; a stop string found in the text ends the request there. None for an
        unfinished request of generate(), which only collects final outputs (packing one costs a copy
        of its tokens: at 256 requests that is a tenth of a decode step's host time)."""
        request = state.request
        stop = state.text.append(token_id, last=finished)
        if stop is not None and not finished:
            self.scheduler.finish_request(request.request_id, FinishReason.STOP, stop_reason=stop)
            finished = True
        elif stop is not None:  # it also hit a length limit: the stop string is what ended it
            request.finish_reason, request.stop_reason = FinishReason.STOP, stop
        if finished:
            return self._final_output(state)
        return None if state.collect else state.text.output(request, finished=False)

    def _final_output(self, state: _RequestState) -> RequestOutput:
        rid = state.request.request_id
        del self._states[rid]
        out = state.text.output(state.request, finished=True)
        if state.collect:
            self._collected[rid] = out
        return out

    # ---- batch helpers -----------------------------------------------------------------------------

    def generate(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
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
                    raise RuntimeError(f"the scheduler ran nothing while {len(self._states)} requests are "
                                       f"unfinished: it is stuck (a request that never fits?)")
                num_tokens += sum(len(o.token_ids) for o in outputs if o.finished)
                done = {rid for rid in pending if rid in self._collected}  # finished or aborted
                pending -= done
                bar.update(len(done))
                bar.set_postfix(output_tok_s=f"{num_tokens / (time.monotonic() - t0):.1f}")
        return [self._collected.pop(rid) for rid in ids]

    def stream(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None = None,
               request_id: str | None = None) -> Iterator[str]:
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
        return timeline_columns(self.timeline)

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
        raise TypeError(f"{type(obj).__name__} cannot serve as a {protocol.__name__}: it lacks {missing}. "
                        f"Fix: implement them (see labkit.protocols.{protocol.__name__})")


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
        raise TypeError(f"prompts must be a str, a list of token ids, or a list of those; got {type(prompts).__name__}")
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


def __getattr__(name: str):
    """The facade and the chat template moved to labkit.llm; their names stay importable from here."""
    from labkit import llm

    if name in llm.__all__:
        return getattr(llm, name)
    raise AttributeError(f"module 'labkit.engine' has no attribute {name!r}")


__all__ = ["EngineConfig", "LLMEngine", "check_protocol", "encode_text", "normalize_prompts"]
