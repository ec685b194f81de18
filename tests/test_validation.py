"""metalab.validation: the shared argument checks (and the old addresses that re-export them)."""

import math

import pytest

from metalab.validation import check_choice, check_interval, check_positive_int, check_real


def test_check_choice_returns_the_value_or_names_argument_choices_and_value():
    assert check_choice("order", "fixed", ("random", "fixed")) == "fixed"
    assert check_choice("group", "C4", {"C4": 1, "D4": 2}) == "C4"
    with pytest.raises(ValueError, match=r"^order must be one of \['random', 'fixed'\], "
                                         r"got 'x'$"):
        check_choice("order", "x", ("random", "fixed"))


@pytest.mark.parametrize("bad", [0, -3, 1.0, True, "2", None])
def test_check_positive_int_refuses_non_ints_bools_and_small_values(bad):
    with pytest.raises(ValueError, match=rf"^shots must be an integer >= 1, got {bad!r}$"):
        check_positive_int("shots", bad)


def test_check_positive_int_minimum():
    assert check_positive_int("seed", 0, minimum=0) == 0
    assert check_positive_int("shots", 3) == 3
    with pytest.raises(ValueError, match="input_length must be an integer >= 3, got 2"):
        check_positive_int("input_length", 2, 3)


def test_check_real():
    assert check_real("lr", 2) == 2.0 and isinstance(check_real("lr", 2), float)
    assert check_real("alpha", 0.0) == 0.0
    for bad in (math.inf, math.nan, True, "1", -0.5):
        with pytest.raises(ValueError, match="alpha must be a finite number >= 0.0"):
            check_real("alpha", bad)
    with pytest.raises(ValueError, match="lr must be a finite number > 0.0, got 0"):
        check_real("lr", 0, inclusive=False)


def test_check_interval():
    assert check_interval("x_range", (-5, 5)) == (-5.0, 5.0)
    assert check_interval("phase", [1, 1], allow_empty=True) == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"x_range must be a \(low, high\) pair with low < high"):
        check_interval("x_range", (1, 1))
    with pytest.raises(ValueError, match=r"phase must be a \(low, high\) pair with low <= high"):
        check_interval("phase", (2, 1), allow_empty=True)
    with pytest.raises(ValueError, match=r"x_range must be a \(low, high\) pair of numbers"):
        check_interval("x_range", (1, 2, 3))


def test_the_old_addresses_still_work():
    from metalab.combiners.base import check_choice as combiners_choice
    from metalab.combiners.base import check_real as combiners_real
    from metalab.tasks.source import check_positive_int as tasks_positive_int

    assert combiners_choice is check_choice and combiners_real is check_real
    assert tasks_positive_int is check_positive_int
