"""The `LLM` facade, shaped like vLLM's, and SmolLM2-Instruct's chat template.

    llm = LLM("smollm2-135m-instruct")
    outs = llm.generate(["Hi", "2 + 2 ="], SamplingParams(temperature=0, max_tokens=32))
    print(outs[0].text)

`LLM` loads a model and its tokenizer (`load_model`, through labkit.loader) and drives one
`LLMEngine`; everything else is the engine's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from labkit import loader
from labkit.engine import EngineConfig, LLMEngine
from labkit.outputs import RequestOutput

# The system message SmolLM2-Instruct's chat template adds when a conversation has none.
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


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
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} is {m!r}: each message must be a dict with str 'role' and 'content'")
    if messages[0]["role"] != "system" and default_system_prompt is not None:
        parts.append(f"<|im_start|>system\n{default_system_prompt}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class LLM:
    """vLLM-shaped facade: `LLM(model=...).generate(prompts, SamplingParams(...))`.

    model: "smollm2-135m-instruct" (the GGUF asset), a path to a .gguf file or a Hugging Face folder,
    a labkit LlamaForCausalLM, or a transformers Llama/Qwen model (its weights are copied). Keyword
    arguments other than tokenizer are EngineConfig fields (block_size, num_gpu_blocks, max_num_seqs,
    ...) or the engine's parts (scheduler=, kv_cache=, sampler=)."""

    def __init__(self, model: str | os.PathLike | torch.nn.Module = "smollm2-135m-instruct", tokenizer: Any = None, *,
                 dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                 scheduler: Any = None, kv_cache: Any = None, sampler: Any = None, **engine_config: Any):
        known = {f.name for f in dataclasses.fields(EngineConfig) if f.init}
        if set(engine_config) - known:
            raise TypeError(f"LLM got unknown arguments {sorted(set(engine_config) - known)}: EngineConfig fields are "
                            f"{sorted(known)}")
        config = EngineConfig(dtype=dtype, device=device, **engine_config)
        loaded, tokenizer = loader.load_model(model, tokenizer, config.dtype, config.device)
        self.llm_engine = LLMEngine(loaded, tokenizer, config, scheduler=scheduler, kv_cache=kv_cache, sampler=sampler)

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def generate(self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Outputs in prompt order. prompts: a str, a list of token ids, or a list of those."""
        return self.llm_engine.generate(prompts, sampling_params, use_tqdm)

    def chat(
        self, messages: Any, sampling_params: Any = None, use_tqdm: bool = True, add_generation_prompt: bool = True
    ) -> list[RequestOutput]:
        """One conversation (a list of message dicts, or a str) or a list of conversations."""
        convs = [messages] if isinstance(messages, str) or (messages and isinstance(messages[0], dict)) else messages
        prompts = [apply_chat_template(c, add_generation_prompt) for c in convs]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(self, prompt: str | Sequence[int], sampling_params: Any = None) -> Iterator[str]:
        return self.llm_engine.stream(prompt, sampling_params)

    @staticmethod
    def apply_chat_template(messages: Any, add_generation_prompt: bool = True) -> str:
        return apply_chat_template(messages, add_generation_prompt)


load_model = loader.load_model  # kept importable from here

__all__ = ["LLM", "SMOLLM2_SYSTEM_PROMPT", "apply_chat_template", "load_model"]
