"""The one exception type for mistakes a user can fix.

Entrypoints catch :class:`UserError`, print its message as a single line and exit with status 1,
so every message must say what is wrong *and* which setting or command fixes it.
"""


class UserError(Exception):
    """A bad input (config value, data directory, checkpoint, device) with an actionable message."""


class RunFailed(UserError):
    """A run that started and then failed (diverged, could not write a checkpoint): its folder is kept, with the
    failure recorded in ``summary.json`` under ``status``."""

    def __init__(self, message: str, status: str = "failed"):
        super().__init__(message)
        self.status = status
