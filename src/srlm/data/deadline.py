"""A wall-clock limit for pure-Python work on untrusted input (answer checkers, reward functions).

`with time_limit(seconds): ...` raises `TimeLimitExceeded` when the block runs too long. It uses
SIGALRM, so it only works in the main thread of a process; elsewhere (or with seconds <= 0) the
block runs unlimited, and callers cap their inputs' size instead.

Limits nest, and an inner one never weakens an outer one: a reward function's deadline still
holds around a verifier that sets its own and treats its own timeout as "not equal". When an
enclosing limit runs out, what travels up is a private exception that `except
TimeLimitExceeded` does not catch, turned into `TimeLimitExceeded` by the limit it belongs to.

Both derive from BaseException, not Exception: sympy and math-verify catch Exception all over
their parsers and simplifiers, and a deadline they swallowed would leave the rest of the work
running with no alarm armed.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager


class TimeLimitExceeded(BaseException):
    pass


class _Expired(BaseException):
    """The limit at `depth` ran out; only that limit turns this into TimeLimitExceeded."""

    def __init__(self, depth: int):
        super().__init__(depth)
        self.depth = depth


_deadlines: list[float] = []  # monotonic deadlines of the active limits, outermost first (main thread only)
_exiting = False  # a limit is updating _deadlines: the alarm handler leaves it to the exit path


def _check() -> None:
    """Raise for the outermost limit that has run out, else arm the timer for the nearest deadline."""
    now = time.monotonic()
    expired = next((d for d, t in enumerate(_deadlines) if t <= now), None)
    if expired is not None:
        raise _Expired(expired)
    if _deadlines:
        signal.setitimer(signal.ITIMER_REAL, max(min(_deadlines) - now, 1e-6))


def _on_alarm(signum, frame):
    if not _exiting:
        _check()


@contextmanager
def time_limit(seconds: float):
    global _exiting
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    depth = len(_deadlines)
    old = signal.signal(signal.SIGALRM, _on_alarm) if depth == 0 else None
    _deadlines.append(time.monotonic() + seconds)
    try:
        _check()
        yield
    except _Expired as e:
        if e.depth != depth:
            raise
        raise TimeLimitExceeded() from None
    finally:
        _exiting = True
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            del _deadlines[depth:]
            if depth == 0:
                signal.signal(signal.SIGALRM, old)
        finally:
            _exiting = False
        if depth > 0:
            _check()  # an enclosing limit that ran out meanwhile fires now, past whoever catches ours
