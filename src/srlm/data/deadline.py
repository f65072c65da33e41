"""A wall-clock limit for pure-Python work on untrusted input (answer checkers, reward functions).

`with time_limit(seconds): ...` raises `TimeLimitExceeded` when the block runs too long. It uses
SIGALRM, so it only works in the main thread of a process; elsewhere (or with seconds <= 0) the
block runs unlimited, and callers cap their inputs' size instead.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class TimeLimitExceeded(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def _raise(signum, frame):
        raise TimeLimitExceeded()

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
