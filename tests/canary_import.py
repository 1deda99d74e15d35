"""A module whose import is recorded (in :data:`tests.canary.IMPORTS`): a target naming it must never be imported."""

from tests import canary

canary.IMPORTS.append(__name__)


def fire(*args, **kwargs):
    """Record the call, as :func:`tests.canary.fire` does."""
    canary.CALLS.append((args, kwargs))
