"""The one exception type for mistakes a user can fix.

Entrypoints catch :class:`UserError`, print its message as a single line and exit with status 1,
so every message must say what is wrong *and* which setting or command fixes it.
"""


class UserError(Exception):
    """A bad input (config value, data directory, checkpoint, device) with an actionable message."""
