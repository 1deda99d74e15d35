"""A canary for the trust tests (``tests/test_trust.py``): :func:`fire` records every call in :data:`CALLS`, and
:mod:`tests.canary_import` records its own import in :data:`IMPORTS`. A crafted checkpoint names them as targets;
no loader may ever reach them."""

CALLS: list = []
IMPORTS: list = []


def fire(*args, **kwargs):
    """Record the call (what a malicious ``_target_`` would have run) and return nothing."""
    CALLS.append((args, kwargs))
