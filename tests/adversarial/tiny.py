"""A tiny graded assignment (three tasks of chapter 1) for the adversarial grading corpus.

It runs in a few seconds, so that CI can grade a whole class of hostile submissions in one
`make grade` run. Task 1 (1 point), task 2 (2 points), task 3 (2 points): 5 points in all.
"""

from __future__ import annotations

from autograder.authoring import code, markdown, notebook, readonly, solution, tests

STEM = "00_tiny"
POINTS = {"t1-units-tests": 1.0, "t2-pairs-tests": 2.0, "t3-merge-tests": 2.0}

# The line magic is there as in the chapters' set-up cells (%matplotlib inline): the grading process
# runs the set-up cell without it; a set-up cell it could not run would send every test cell of the
# notebook back into the student's kernel, where the cheats below forge their verdicts.
SETUP = """\
%precision 4
from labkit import grading as g
from labkit import tokenizer as lt
from labkit import tokenizer_zoo as zoo
"""

T1 = """\
def units_that_fit(context_len: int, sample_tokens: int, sample_units: int) -> int:
    ### BEGIN SOLUTION
    return context_len * sample_units // sample_tokens
    ### END SOLUTION
"""

T1_TESTS = """\
g.check_function(units_that_fit, zoo.units_that_fit, [g.case(4096, 13, 10), g.case(4096, 5, 2)])
### BEGIN HIDDEN TESTS
g.check_function(units_that_fit, zoo.units_that_fit, [g.args(g.ints(1, 9000), g.ints(1, 500), g.ints(1, 500))],
                 n=50, hint="SECRET-HINT-T1 round down")
### END HIDDEN TESTS
"""

T2 = """\
def get_pair_counts(ids: list[int], counts: dict | None = None) -> dict:
    ### BEGIN SOLUTION
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts
    ### END SOLUTION
"""

T2_TESTS = """\
g.check_function(get_pair_counts, lt.get_pair_counts, [g.case(list(b"aaabdaaabac")), g.case([]), g.case([5])])
### BEGIN HIDDEN TESTS
g.check_function(get_pair_counts, lt.get_pair_counts, [g.args(g.token_ids(4, 0, 40))], n=40,
                 hint="SECRET-HINT-T2 count overlapping neighbours")
### END HIDDEN TESTS
"""

T3 = """\
def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    ### BEGIN SOLUTION
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    ### END SOLUTION
"""

T3_TESTS = """\
g.check_function(merge, lt.merge, [g.case(list(b"aaabdaaabac"), (97, 97), 256), g.case([7, 7, 7], (7, 7), 99)])
### BEGIN HIDDEN TESTS
g.check_function(merge, lt.merge, [g.args(g.token_ids(3, 0, 40), g.pairs(3), g.ints(256, 400))], n=60,
                 hint="SECRET-HINT-T3 skip both ids")
### END HIDDEN TESTS
"""


def instructor_notebook():
    """solutions/lab0.1/00_tiny.ipynb of the corpus's course."""
    return notebook(
        [
            markdown("# A tiny assignment"),
            readonly(SETUP, "setup"),
            markdown("## Task 1: units that fit"),
            solution(T1, "t1-units"),
            tests(T1_TESTS, "t1-units-tests", points=1),
            markdown("## Task 2: pair counts"),
            solution(T2, "t2-pairs"),
            tests(T2_TESTS, "t2-pairs-tests", points=2),
            markdown("## Task 3: merge"),
            solution(T3, "t3-merge"),
            tests(T3_TESTS, "t3-merge-tests", points=2),
            code("print(merge([1, 2, 1, 2], (1, 2), 9))  # try your merge"),
        ]
    )
