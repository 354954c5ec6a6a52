"""Chapter 2 (inference graph against training graph): the graded checks, one call per test cell.

    ch2.check_training_bytes(training_bytes)               # visible checks
    ch2.check_training_bytes(training_bytes, hidden=True)  # the grader's fresh random inputs
"""

from __future__ import annotations

import math
import random

import torch

from labkit import grading as g
from labkit import measure, memory
from labkit.exercises.common import int_result, random_shape, substituted
from labkit.grading.recipe import rebuildable

_PARTS = ("weights", "gradients", "master_weights", "optimizer_states")


# ------------------------------------------------------------------------------------ Task 1
def reference_training_bytes(shape, param_dtype="bf16", master_weights=True) -> dict[str, int]:
    fp = memory.training_footprint(shape, param_dtype=param_dtype, master_weights=master_weights)
    return {k: getattr(fp, k) for k in _PARTS}


def check_training_bytes(fn, hidden: bool = False) -> None:
    hint = ("per parameter: weights and gradients in param_dtype; fp32 master copy only if master_weights; "
            "Adam's m and v in fp32 (the mixed-precision recipe this table follows); whole bytes (int)")
    cases = ([g.case(memory.get_preset("llama-2-13b"), "bf16", True), g.case(memory.get_preset("gpt2"), "fp32", False)]
             if not hidden else
             [g.args(random_shape, g.choice(["fp32", "fp16", "bf16"]), g.choice([True, False]))])
    g.check_function(fn, reference_training_bytes, cases, n=40, hint=hint, compare=int_result,
                     forbid=[memory.training_footprint], name="training_bytes")


# ------------------------------------------------------------------------------------ Task 2
def check_weight_bytes(fn, hidden: bool = False) -> None:
    hint = "payload = num_params x dtype bytes; one scale per group, counting a last partial group; round up"
    params_13b = memory.get_preset("llama-2-13b").num_params
    if not hidden:
        cases = [g.case(params_13b, "fp16"), g.case(params_13b, "int4"),
                 g.case(params_13b, "int4", group_size=128, scale_bytes=2),
                 g.case(1000, "int4", group_size=128, scale_bytes=2), g.case(3, "int4")]
        return g.check_function(fn, memory.weight_bytes, cases, compare=int_result, hint=hint)
    g.check_function(fn, memory.weight_bytes,
                     [g.args(g.ints(1, 10**11), g.choice(["fp32", "fp16", "bf16", "int8", "int4"]),
                             group_size=g.choice([None, 16, 32, 64, 128, 1000]), scale_bytes=g.choice([2, 4])),
                      g.args(g.ints(1, 999), g.choice(["int4", "int8"]), group_size=g.ints(1, 300),
                             scale_bytes=g.choice([1, 2, 4]))],
                     n=40, compare=int_result, hint=hint)


# ------------------------------------------------------------------------------------ Task 3
def tensor_lists(rng: random.Random) -> g.Call:
    """Tensors of random shapes and dtypes; some repeated, some views (slices, transposes, reshapes)."""
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8]
    base = [torch.zeros(rng.randint(2, 9), rng.randint(2, 9), dtype=rng.choice(dtypes))
            for _ in range(rng.randint(1, 5))]
    views = [lambda t: t, lambda t: t[1:], lambda t: t.T, lambda t: t[:, :1], lambda t: t.reshape(-1)[::2]]
    return g.case([rng.choice(views)(rng.choice(base)) for _ in range(rng.randint(1, 8))])


def check_storage_bytes(fn, hidden: bool = False) -> None:
    hint = "key each storage by t.untyped_storage().data_ptr() and add storage.nbytes() once per key"
    if not hidden:
        tied = torch.nn.Embedding(10, 4).weight.detach()  # an embedding, and its transpose as an output head
        return g.check_function(fn, measure.storage_bytes,
                                [g.case([torch.zeros(3, 4)]), g.case([tied, tied.T]), g.case([tied[1:]]),
                                 tensor_lists], n=10, hint=hint)
    g.check_function(fn, measure.storage_bytes, [tensor_lists], n=60, hint=hint)


# ------------------------------------------------------------------------------------ Task 4
def _reference_adam(seed: int) -> dict[str, int]:
    model, optimizer = measure.toy_training_step(seed)  # a small random MLP after one AdamW step
    return {"parameters": measure.storage_bytes(list(model.parameters())),
            "gradients": measure.storage_bytes([p.grad for p in model.parameters()]),
            "optimizer_states": measure.storage_bytes(measure.optimizer_state_tensors(optimizer))}


def check_adam_footprint(fn, hidden: bool = False) -> None:
    """adam_footprint with labkit's storage_bytes in place of the student's (Task 3)."""
    hint = "the case is the seed of measure.toy_training_step(seed); look in p.grad and in optimizer.state"
    with substituted(fn, storage_bytes=measure.storage_bytes):
        g.check_function(lambda seed: fn(*measure.toy_training_step(seed)), _reference_adam, [g.ints(0, 10**6)],
                         n=25 if hidden else 5, hint=hint, name="adam_footprint", time_limit=30,
                         forbid=[measure.optimizer_state_tensors, measure.training_step_footprint])


# ------------------------------------------------------------------------------------ Task 5
@rebuildable
def toy_model_and_loss(seed: int):
    """(model, loss_fn): measure.random_mlp(seed) and the mean square of its output on its batch."""
    model, x = measure.random_mlp(seed)
    return model, lambda m: m(x).float().pow(2).mean()


def check_saved_bytes(fn, hidden: bool = False) -> None:
    """saved_activation_bytes with labkit's storage_bytes in place of the student's (Task 3)."""
    hint = ("collect the tensors autograd saves (torch.autograd.graph.saved_tensors_hooks) while loss_fn runs "
            "with gradients on, drop the parameters' own storages, and add up the distinct storages")
    with substituted(fn, storage_bytes=measure.storage_bytes):
        g.check_function(lambda seed: fn(*toy_model_and_loss(seed)),
                         lambda seed: measure.saved_activation_bytes(*toy_model_and_loss(seed)),
                         [g.ints(0, 10**6)], n=25 if hidden else 5, hint=hint, name="saved_activation_bytes",
                         forbid=[measure.saved_for_backward, measure.training_step_footprint], time_limit=30)


# ------------------------------------------------------------------------------------ Task 6
def reference_roofline(flops, bytes_moved, peak_flops, memory_bandwidth):
    b = memory.StepBound(flops, bytes_moved, flops / peak_flops, bytes_moved / memory_bandwidth)
    return b.seconds, b.bound


def _log_uniform(lo: float, hi: float):
    return lambda rng: 10 ** rng.uniform(math.log10(lo), math.log10(hi))


def check_roofline(fn, hidden: bool = False) -> None:
    hint = ("compare flops / peak_flops with bytes_moved / memory_bandwidth; the larger one is the bound, "
            "and a tie counts as memory-bound")
    check = dict(compare=g.close(rtol=1e-9), hint=hint, name="step_time_lower_bound",
                 forbid=[memory.decode_step_bound, memory.prefill_bound])
    if not hidden:
        h100 = memory.get_gpu("H100-SXM")
        decode = memory.decode_step_bound("llama-2-13b", h100, weight_dtype="fp16")
        return g.check_function(fn, reference_roofline,
                                [g.case(decode.flops, decode.bytes_moved, h100.peak_flops, h100.memory_bandwidth),
                                 g.case(2e12, 4e9, 1e12, 2e9)],  # both times exactly 2 s: the tie rule
                                **check)
    g.check_function(fn, reference_roofline,
                     [g.args(_log_uniform(1e6, 1e16), _log_uniform(1e6, 1e13), _log_uniform(1e11, 1e16),
                             _log_uniform(1e10, 1e13)), _tie], n=50, **check)


def _tie(rng: random.Random) -> g.Call:
    """Compute time == memory time exactly: flops and bytes are whole multiples of the peaks."""
    seconds, peak, bandwidth = rng.randint(1, 9), 10 ** rng.randint(11, 15), 10 ** rng.randint(9, 12)
    return g.case(float(seconds * peak), float(seconds * bandwidth), float(peak), float(bandwidth))
