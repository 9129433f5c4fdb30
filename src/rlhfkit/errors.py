"""The one exception type users see: its message is a complete, one-line explanation."""


class RlhfkitError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
