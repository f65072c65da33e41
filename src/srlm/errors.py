"""The one error type for user mistakes.

Raise `SrlmError` when the user can fix the problem (a missing file, a bad config
value, a malformed data line). The message names the file, line, field or tensor
at fault and says what to do. The CLI prints it without a traceback; tracebacks
are for bugs.
"""


class SrlmError(Exception):
    """A mistake in user input: the message says what is wrong and how to fix it."""


def did_you_mean(name: object, known, prefix: str = "", cutoff: float = 0.6) -> str:
    """` Did you mean 'x'?` for the known name closest to `name`, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=cutoff)
    return f" Did you mean {prefix}{close[0]!r}?" if close else ""
