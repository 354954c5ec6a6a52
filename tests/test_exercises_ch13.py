"""labkit.exercises: the pieces the chapters' checks share (the checks themselves run in the notebooks'
grading round trip, tests/test_notebooks.py, against every typical mistake of tests/mistakes/)."""

import random

import pytest

from labkit import grading as g
from labkit.exercises import ch1, ch3, common


def test_int_result_wants_ints_where_the_reference_has_ints():
    assert common.int_result(3, 3) is None
    assert "expected an int" in common.int_result(3, 3.0)
    assert "expected an int" in common.int_result(3, True)
    assert "expected an int" in common.int_result({"a": [1, 2]}, {"a": [1, 2.0]})
    assert common.int_result(2.5, 2.5) is None
    assert common.int_result(3, 4) is not None


def test_substituted_restores_the_students_names():
    namespace = {"merge": "student's"}
    exec("def uses():\n    return merge", namespace)
    with common.substituted(namespace["uses"], merge="labkit's"):
        assert namespace["uses"]() == "labkit's"
    assert namespace["uses"]() == "student's"


def test_random_shape_is_a_valid_gqa_shape():
    rng = random.Random(0)
    for _ in range(50):
        s = common.random_shape(rng)
        assert s.num_attention_heads % s.num_key_value_heads == 0 and s.num_params > 0


def test_compare_predictions_table():
    table = common.compare_predictions({"a": 10, "b": None}, {"a": 20, "b": 3})
    assert "| a | 10 | 20 | 2.00x |" in table and "| b | (not recorded) | 3 |  |" in table


def test_units_check_catches_float_division():
    with pytest.raises(g.CheckFailed, match="wrong result"):
        ch1.check_units_that_fit(lambda c, t, u: int(c * u / t))


def test_reservation_check_catches_pow2_above_exact_powers():
    def off_by_one_power(prompts, outputs, policy, max_len):
        out = {"live": sum(prompts), "reserved": sum(outputs), "internal": 0}
        for p, o in zip(prompts, outputs):
            region = {"reserve_max": max_len, "reserve_exact": p + o,
                      "reserve_pow2": min(1 << (p + o).bit_length(), max_len)}[policy]
            out["internal"] += region - p - o
        return out
    with pytest.raises(g.CheckFailed, match="wrong result"):
        ch3.check_reservation_slots(off_by_one_power)
