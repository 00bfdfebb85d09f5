"""The one exception type users see.

Anything raised as `LiquidgenError` is a problem the user can fix (a wrong path, a mismatched
cache, a full disk); the CLI prints its message on one line and exits non-zero, with no
traceback. Every other exception is a bug and keeps its traceback.
"""


class LiquidgenError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""


def printable(text: str) -> str:
    """`text` on one line as it is shown or logged: control characters (a newline or tab in a
    file name) written as escapes, so an input's name cannot forge lines of output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
