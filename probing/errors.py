"""The exception types melodia shows users as a single line (the CLI prints it, exit code 2).

Light on purpose (no imports): the CLI catches these before anything heavy is loaded.

Examples:
    >>> raise MelodiaError("layer spec 'self:20' is outside 1-16")
    Traceback (most recent call last):
    MelodiaError: layer spec 'self:20' is outside 1-16
"""


class MelodiaError(Exception):
    """A user-facing error: what was wrong, what was expected, what to do, in one line."""


class StoreMismatchError(MelodiaError, ValueError):
    """The path holds a capture store of another run (model, config, prompts or arrays)."""


class NotACaptureStoreError(MelodiaError, ValueError):
    """The path holds something that is not a (fully created) melodia capture store."""
