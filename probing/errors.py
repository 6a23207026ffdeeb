"""The one exception type melodia shows users as a single line (the CLI prints it, exit code 2).

Examples:
    >>> raise MelodiaError("layer spec 'self:20' is outside 1-16")
    Traceback (most recent call last):
    MelodiaError: layer spec 'self:20' is outside 1-16
"""


class MelodiaError(Exception):
    """A user-facing error: what was wrong, what was expected, what to do, in one line."""
