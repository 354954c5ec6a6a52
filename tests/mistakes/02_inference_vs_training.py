"""Typical mistakes in solutions/lab0.1/02_inference_vs_training.ipynb (format: tests/mistakes/README.md)."""

from notebook_tools import Mistake

MISTAKES = [
    Mistake(
        "adam-states-4-bytes",  # the circulated 13B table: 52 GB of "optimizer states"
        cell="t2-1-training-bytes",
        find='"optimizer_states": int(2 * n * fp32),',
        replace='"optimizer_states": int(n * fp32),',
        lost=["t2-1-training-bytes-tests"],
        says="wrong result",
    ),
    Mistake(
        "int4-without-group-scales",  # the lab's 6.5 GB: 0.5 bytes per int4 weight, scales forgotten
        cell="t2-2-weight-bytes",
        find="return math.ceil(payload + num_groups * scale_bytes)",
        replace="return math.ceil(payload)",
        lost=["t2-2-weight-bytes-tests"],
        says="wrong result",
    ),
    Mistake(
        "partial-group-has-no-scale",  # floor division drops the scale of a last, incomplete group
        cell="t2-2-weight-bytes",
        find="num_groups = math.ceil(num_params / group_size)",
        replace="num_groups = num_params // group_size",
        lost=["t2-2-weight-bytes-tests"],
        says="wrong result",
    ),
    Mistake(
        "counts-shared-storage-twice",  # a view or a tied weight counted again
        cell="t2-3-storage-bytes",
        find="if storage.data_ptr() not in seen:",
        replace="if True:",
        lost=["t2-3-storage-bytes-tests"],
        says="wrong result",
    ),
    Mistake(
        "roofline-adds-the-times",  # compute and memory overlap: the bound is the larger, not the sum
        cell="t2-6-roofline",
        find="return max(compute_s, memory_s),",
        replace="return compute_s + memory_s,",
        lost=["t2-6-roofline-tests"],
        says="wrong result",
    ),
    Mistake(
        "roofline-strict-tie",  # the task's tie rule: equal times count as memory-bound
        cell="t2-6-roofline",
        find='("memory" if memory_s >= compute_s else "compute")',
        replace='("memory" if memory_s > compute_s else "compute")',
        lost=["t2-6-roofline-tests"],
        says="wrong result",
    ),
    Mistake(
        "saved-bytes-under-no-grad",  # gradients switched off inside: autograd saves nothing, 0 bytes
        cell="t2-5-saved-bytes",
        find="    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):\n        loss_fn(model)",
        replace="    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):\n"
        "        loss_fn(model)",
        lost=["t2-5-saved-bytes-tests"],
        says="wrong result",
    ),
    Mistake(
        "adam-states-from-named-keys",  # still right: reading exp_avg and exp_avg_sq by name
        cell="t2-4-adam-footprint",
        find=(
            "states = [v for state in optimizer.state.values()"
            " for v in state.values() if torch.is_tensor(v)]"
        ),
        replace=(
            "states = [state[key] for state in optimizer.state.values()\n"
            '              for key in ("step", "exp_avg", "exp_avg_sq") if torch.is_tensor(state.get(key))]'
        ),
        lost=[],
    ),
]
