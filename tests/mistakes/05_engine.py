"""Typical mistakes in solutions/lab0.1/05_engine.ipynb (format: tests/mistakes/README.md)."""

from notebook_tools import Mistake

MISTAKES = [
    Mistake(
        "preempts-the-oldest",  # evicts the request that has waited longest instead of the newest
        cell="t5-1-schedule",
        find="victim = running.pop()  # 2. preempt the newest",
        replace="victim = running.pop(0)",
        lost=["t5-1-schedule-tests"],
        says="shortest failing sequence",
    ),
    Mistake(
        "admits-past-the-free-blocks",  # ignores allocate_slots' answer at admission
        cell="t5-1-schedule",
        find="        if not kv_cache.allocate_slots(request.request_id, request.all_token_ids, num_cached, num_new, "
        "blocks):\n            break  # first come, first served\n",
        replace="        kv_cache.allocate_slots(request.request_id, request.all_token_ids, num_cached, num_new, "
        "blocks)\n",
        lost=["t5-1-schedule-tests"],
        says="shortest failing sequence",
    ),
    Mistake(
        "prefill-charged-twice",  # an admitted prefill counts twice against the token budget
        cell="t5-1-schedule",
        find="        scheduled.append((request, num_new))\n        token_budget -= num_new\n    return",
        replace="        scheduled.append((request, num_new))\n        token_budget -= 2 * num_new\n    return",
        lost=["t5-1-schedule-tests"],
        says="wrong result",
    ),
    Mistake(
        "positions-restart-at-zero",  # every request's rows numbered from 0, as if all were prefills
        cell="t5-2-build-batch",
        find="        start, end = s.num_computed_tokens, s.num_computed_tokens + s.num_new_tokens",
        replace="        start, end = 0, s.num_new_tokens",
        lost=["t5-2-build-batch-tests"],
        says="wrong result",
    ),
    Mistake(
        "samples-the-first-row",  # logits of a request's first new token instead of its last
        cell="t5-2-build-batch",
        find='batch["logits_indices"].append(batch["query_start_loc"][-1] - 1)',
        replace='batch["logits_indices"].append(batch["query_start_loc"][-2])',
        lost=["t5-2-build-batch-tests"],
        says="wrong result",
    ),
    Mistake(
        "one-token-too-many",  # > instead of >=: generates max_tokens + 1 tokens
        cell="t5-3-update-request",
        find="request.num_output_tokens >= request.max_tokens",
        replace="request.num_output_tokens > request.max_tokens",
        lost=["t5-3-update-request-tests"],
        says="wrong result",
    ),
    Mistake(
        "top-p-keeps-the-wrong-side",  # drops the head of the distribution and keeps the tail
        cell="t5-4-sample-row",
        find="probs[1:][mass_before[1:] >= top_p] = 0.0",
        replace="probs[1:][mass_before[1:] < top_p] = 0.0",
        lost=["t5-4-sample-row-tests"],
        says="wrong result",
    ),
    Mistake(
        "temperature-after-softmax",  # divides probabilities by T: renormalizing undoes it
        cell="t5-4-sample-row",
        find="    sorted_logits, order = torch.sort(logits / temperature, descending=True)",
        replace="    sorted_logits, order = torch.sort(logits, descending=True)",
        also=[("t5-4-sample-row", "    probs = torch.softmax(sorted_logits, dim=-1)\n",
               "    probs = torch.softmax(sorted_logits, dim=-1) / temperature\n")],
        lost=["t5-4-sample-row-tests"],
        says="chi-square",
    ),
    Mistake(
        "sampler-with-multinomial",  # still right: torch.multinomial draws a different stream, same law
        cell="t5-4-sample-row",
        find="    u = torch.rand((), generator=generator) * probs.sum()\n"
        "    rank = min(int(torch.searchsorted(torch.cumsum(probs, dim=-1), u, right=True)), "
        "int((probs > 0).sum()) - 1)\n",
        replace="    rank = int(torch.multinomial(probs, 1, generator=generator))\n",
        lost=[],
    ),
    Mistake(
        "preempted-is-a-dead-end",  # the classic diagram: no way back to RUNNING after preemption
        cell="t5-5-next-status",
        find="        (S.PREEMPTED, \"schedule\"): S.RUNNING,\n",
        replace="",
        lost=["t5-5-next-status-tests"],
        says="your code raised ValueError",
    ),
]
