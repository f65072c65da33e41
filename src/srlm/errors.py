"""The one error type for user mistakes.

Raise `SrlmError` when the user can fix the problem (a missing file, a bad config
value, a malformed data line). The message names the file, line, field or tensor
at fault and says what to do. The CLI prints it without a traceback; tracebacks
are for bugs.
"""


class SrlmError(Exception):
    """A mistake in user input: the message says what is wrong and how to fix it."""
