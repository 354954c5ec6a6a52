"""The workbook's payoff, outside the notebooks: the solution's allocator (chapter 4) and scheduler, batch
builder, update and sampler (chapter 5) run inside LLMEngine on SmolLM2, and greedy decoding gives the
reference engine's tokens, token for token, also when a tiny cache forces preemptions.

The student's parts are taken from the solution notebooks' solution cells (executed in a namespace with
the notebooks' own imports), so this checks the code a student is shown as the answer, plugged in
through labkit.protocols by classes that subclass none of labkit's parts.
"""

from __future__ import annotations

import functools
import re

import pytest

# GPU machines may have only the runtime dependencies: skip (with this reason), do not fail collection
pytest.importorskip("nbformat", reason="needs the dev extras: pip install -e '.[dev]'")
pytest.importorskip("nbclient", reason="needs the dev extras: pip install -e '.[dev]'")
import nbformat  # noqa: E402
from notebook_tools import SOLUTIONS  # noqa: E402

from labkit import protocols  # noqa: E402
from labkit.engine import EngineConfig, LLMEngine  # noqa: E402
from labkit.exercises import ch4, ch5  # noqa: E402
from labkit.kv_cache import BlockAllocator, PagedKVCache  # noqa: E402
from labkit.llm import LLM, load_model  # noqa: E402
from labkit.sampler import Sampler, SamplingParams  # noqa: E402
from labkit.scheduler import Scheduler  # noqa: E402

_IMPORT = re.compile(r"^(import |from )\S+", re.MULTILINE)


def _solution_namespace(stem: str) -> dict:
    """The notebook's import lines and its solution cells, executed; nothing else of the notebook runs."""
    nb = nbformat.read(str(SOLUTIONS / f"{stem}.ipynb"), as_version=4)
    ns: dict = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade_id") == "setup":
            imports = [line for line in cell.source.splitlines() if _IMPORT.match(line)]
            exec("\n".join(imports), ns)
        elif meta.get("solution"):
            exec(cell.source, ns)
    return ns


@pytest.fixture(scope="module")
def parts() -> dict:
    ch4_ns, ch5_ns = _solution_namespace("04_paged_attention"), _solution_namespace("05_engine")
    kv_cache = functools.partial(ch4.StudentKVCache, ch4_ns["BlockAllocator"], ch4_ns["allocate_slots"],
                                 ch4_ns["slot_mapping"])
    names = ("schedule", "build_batch", "sample_row", "update_request")
    return {"kv_cache": kv_cache, **{n: ch5_ns[n] for n in names}}


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct")


PROMPTS = [LLM.apply_chat_template(q) for q in
           ["What is the capital of France?", "Name three primary colors.", "What is 12 times 12?",
            "Write a haiku about memory."]]


@pytest.mark.parametrize(("num_blocks", "block_size", "budget"), [(128, 16, 64), (12, 8, 2048)],
                         ids=["roomy-chunked", "tiny-cache-preempts"])
def test_student_engine_greedy_equals_reference(smollm2, parts, num_blocks, block_size, budget):
    model, tokenizer = smollm2
    greedy = SamplingParams(temperature=0, max_tokens=12)
    config = EngineConfig(num_gpu_blocks=num_blocks, block_size=block_size, max_num_seqs=4,
                          max_num_batched_tokens=budget, enable_prefix_caching=False)
    reference = LLMEngine(model, tokenizer, EngineConfig(num_gpu_blocks=256)).generate(PROMPTS, greedy, use_tqdm=False)
    engine = ch5.student_engine(model, tokenizer, config, **parts)
    outputs = engine.generate(PROMPTS, greedy, use_tqdm=False)
    assert [o.token_ids for o in outputs] == [r.token_ids for r in reference]
    assert all(len(o.token_ids) == 12 or o.finish_reason == "stop" for o in outputs)
    # every part is the student's, none is (or subclasses) labkit's, and each satisfies its protocol
    for part, ours, proto in [(engine.kv_cache, PagedKVCache, protocols.KVCache),
                              (engine.scheduler, Scheduler, protocols.Scheduler),
                              (engine.sampler, Sampler, protocols.Sampler)]:
        assert not isinstance(part, ours) and isinstance(part, proto), type(part)
    assert not isinstance(engine.kv_cache.allocator, BlockAllocator)
    assert isinstance(engine.runner, ch5.StudentModelRunner)
    preemptions = sum(s.num_preempted for s in engine.timeline)
    if num_blocks == 12:
        assert preemptions > 0, "the tiny cache was meant to force preemptions"
    assert engine.kv_cache.num_free_blocks == num_blocks, "blocks leaked"


def test_student_sampler_with_seed_is_reproducible_in_the_engine(smollm2, parts):
    model, tokenizer = smollm2
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=8, seed=1234)

    def run():
        engine = ch5.student_engine(model, tokenizer, EngineConfig(num_gpu_blocks=64), **parts)
        return [o.token_ids for o in engine.generate(PROMPTS[:2], params, use_tqdm=False)]

    assert run() == run()
