"""labkit: a small, real inference engine (a "nano vLLM") and the reference behind the workbook.

Modules, one concept each: assets (offline files from PyPI), tokenizer (byte-level BPE), memory
(shapes and byte arithmetic), fragmentation (KV allocation simulator), kv_cache (blocks and paged
K/V tensors), attention (paged attention), model (Llama-family decoder and loaders), sampler,
scheduler, engine, viz (figures), grading (checkers the notebooks call).
"""

__version__ = "0.1.0"
