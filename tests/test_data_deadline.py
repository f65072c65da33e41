"""time_limit: fires, nests (an inner limit never cancels an outer one), and is not swallowed by `except Exception`."""

import time

import pytest

from srlm.data.deadline import TimeLimitExceeded, time_limit


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_fires_and_passes_through_except_exception():
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.1):
            try:
                _spin(5)
            except Exception:  # what sympy and math-verify do around their work
                _spin(5)
    assert time.monotonic() - t0 < 1


def test_inner_limit_leaves_the_outer_one_armed():
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.4):
            for _ in range(2):
                try:
                    with time_limit(0.05):
                        _spin(5)
                except TimeLimitExceeded:
                    pass
            _spin(5)  # the outer limit must still fire here
    assert 0.35 < time.monotonic() - t0 < 1.5


def test_outer_limit_binds_an_inner_longer_one():
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.1):
            try:
                with time_limit(10):
                    _spin(5)
            except TimeLimitExceeded:  # a verifier treating the timeout as "not equal" and going on
                pass
            _spin(5)
    assert time.monotonic() - t0 < 1


def test_no_limit_left_behind():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    with time_limit(0.2):
        with time_limit(0.1):
            pass
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.05):
            with time_limit(0.05):
                _spin(5)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is before
    _spin(0.3)  # would raise if a timer were still armed
