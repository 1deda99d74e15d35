"""Helpers for ``[Q, 4]`` tiles whose rows each thread holds whole (four consecutive time steps in registers, loaded
and stored as one vector when the time stride is 1): split into four ``[Q]`` columns and join them back, with no
data moving between threads."""

from __future__ import annotations

from spiking_ssm.kernels.runtime import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _columns(x):
        """The four columns ``[Q]`` of a ``[Q, 4]`` block."""
        even, odd = tl.split(tl.reshape(x, [x.shape[0], 2, 2]))
        c0, c2 = tl.split(even)
        c1, c3 = tl.split(odd)
        return c0, c1, c2, c3

    @triton.jit
    def _rows4(c0, c1, c2, c3):
        """Inverse of :func:`_columns`: four ``[Q]`` columns as one ``[Q, 4]`` block."""
        return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), [c0.shape[0], 4])
