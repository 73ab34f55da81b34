"""The boundary checks every config and entry point shares (`pgjax.validation`), and entry points that used to
let a bool through as a count or refused a NumPy int."""

import numpy as np
import pytest

from pgjax import parallel, runs, validation


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1), np.uint8(2)])
def test_check_int_accepts_ints_numpy_ints_included(value):
    validation.check_int("Config.size", value)


@pytest.mark.parametrize("value", [0, -2, True, np.bool_(True), 2.0, np.float32(2.0), "2", None, np.array([2])])
def test_check_int_refuses_with_the_label_and_the_value(value):
    with pytest.raises(ValueError, match=r"^Config\.size must be a positive int; got ") as err:
        validation.check_int("Config.size", value)
    assert repr(value) in str(err.value)


def test_check_int_minimum_and_note():
    validation.check_int("f: horizon", 0, minimum=0)
    with pytest.raises(ValueError, match=r"^f: horizon must be an int >= 0 \(steps\); got -1\.$"):
        validation.check_int("f: horizon", -1, minimum=0, note=" (steps)")
    with pytest.raises(ValueError, match=r"must be an int >= 3; got 2\."):
        validation.check_int("f: n", 2, minimum=3)


@pytest.mark.parametrize("check, zero_ok", [(validation.check_positive, False), (validation.check_non_negative, True)])
def test_number_checks(check, zero_ok):
    for good in (1e-8, 3, np.float32(0.5), np.int64(2)):
        check("C.lr", good)
    if zero_ok:
        check("C.lr", 0.0)
    bad = [-1.0, float("nan"), float("inf"), True, "0.1", None] + ([] if zero_ok else [0.0, 0])
    for value in bad:
        with pytest.raises(ValueError, match=r"^C\.lr must be a (positive|non-negative) number; got "):
            check("C.lr", value)


def test_predicates():
    assert validation.is_int(np.int16(4)) and not validation.is_int(True) and not validation.is_int(np.bool_(False))
    assert validation.is_real(np.float32(1)) and validation.is_real(3) and not validation.is_real(True)
    assert validation.is_real(float("nan")) and not validation.is_finite_real(float("nan"))
    assert not validation.is_finite_real(float("-inf")) and validation.is_finite_real(np.float64(-2.5))


def test_entry_points_refuse_bools_and_take_numpy_ints():
    metrics = {"env_steps": np.array([[100, 200, 300]]), "episode_return": np.array([[10.0, 50.0, 50.0]])}
    # window=True used to pass as a window of 1; devices_for(True) as a batch of 1
    with pytest.raises(ValueError, match="steps_to_threshold: window must be a positive int; got True"):
        runs.steps_to_threshold(metrics, 40.0, window=True)
    with pytest.raises(ValueError, match="devices_for: batch_size must be a positive int; got True"):
        parallel.devices_for(True)
    # NumPy ints (a sweep's grid) were refused by both
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 40.0, window=np.int64(2)), [300.0])
    assert parallel.devices_for(np.int64(2)) == parallel.devices_for(2)
