"""CUDAGraphRunner's host side, on the CPU: the decode inputs it writes into its persistent buffer are
the ones ModelRunner.prepare_inputs builds, step after step of a real engine run (requests that grow
new blocks, finish, arrive, get preempted, so rows change hands and the batch shrinks and grows).

The graph replay itself needs CUDA (tests/test_engine_gpu.py); here `_replay` is replaced by a check of
the buffer followed by an eager forward pass, so the engine runs on and the tokens must come out as with
the plain ModelRunner."""

import pytest
import torch

from labkit.cuda_runner import CUDAGraphRunner
from labkit.engine import EngineConfig, LLMEngine
from labkit.loader import random_model
from labkit.model import ModelConfig
from labkit.runner import ModelRunner
from labkit.sampler import SamplingParams

TINY = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
MAX_MODEL_LEN = 96


class HostCheckingRunner(CUDAGraphRunner):
    """CUDAGraphRunner's decisions and buffer filling, with every 'replay' checked and run eagerly."""

    def __init__(self, model, kv_cache, device):
        ModelRunner.__init__(self, model, kv_cache.kv_caches, kv_cache.block_size, device)
        self._init_buffers([1, 2, 4, 8], MAX_MODEL_LEN)
        self.last = None

    def execute_model(self, scheduled):
        self.last = list(scheduled)
        return super().execute_model(scheduled)

    def _replay(self, bs, n):
        scheduled = self.last
        assert n == len(scheduled) <= bs
        expected = self.prepare_inputs(scheduled)
        meta = expected.attn_metadata
        ids, pos, slots, lens, tables = (torch.from_numpy(a.copy()) for a in self._parts(self._host_np))
        assert ids[:n].tolist() == expected.input_ids.tolist()
        assert pos[:n].tolist() == expected.positions.tolist()
        assert slots[:n].tolist() == meta.slot_mapping.tolist()
        assert lens[:n].tolist() == meta.seq_lens.tolist()
        for i, s in enumerate(scheduled):
            assert tables[i, : len(s.block_table)].tolist() == list(s.block_table), (i, s.request_id)
        # padding rows store nothing and attend to one key
        assert (slots[n:] == -1).all() and (lens[n:] == 1).all() and (ids[n:] == 0).all()
        return ModelRunner.execute_model(self, scheduled)[0]


@pytest.mark.parametrize("num_blocks", [200, 14])  # 14 blocks of 4: requests preempt one another
def test_graph_runner_host_buffers_match_prepare_inputs(num_blocks):
    torch.set_num_threads(1)
    model = random_model(TINY, seed=0)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, TINY.vocab_size, (int(L),), generator=g).tolist()
               for L in torch.randint(1, 20, (12,), generator=g)]
    params = [SamplingParams(temperature=0, max_tokens=5 + 3 * i, ignore_eos=True) for i in range(len(prompts))]
    config = dict(block_size=4, num_gpu_blocks=num_blocks, max_model_len=MAX_MODEL_LEN, max_num_seqs=8)
    plain = LLMEngine(model, None, EngineConfig(**config)).generate(prompts, params, use_tqdm=False)
    engine = LLMEngine(model, None, EngineConfig(**config), runner=HostCheckingRunner)
    checked = engine.generate(prompts, params, use_tqdm=False)
    assert engine.runner.num_graph_steps > 20 and engine.runner.num_eager_steps > 0
    assert [o.token_ids for o in checked] == [o.token_ids for o in plain]
    if num_blocks == 14:
        assert engine.scheduler.num_preemptions > 0
