"""Fused Triton kernels of the ``lif_parallel`` soma (not written yet: the torch reference runs everywhere)."""


def unsupported() -> str | None:
    """Why the fused kernels cannot run, or None."""
    return "the fused lif_parallel kernels are not written yet"
