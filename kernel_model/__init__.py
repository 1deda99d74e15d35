"""Compile-and-model tools for the Triton kernels (no GPU needed): compile for sm_80/sm_90, count the SASS,
model the H100 time. Outside the runtime import path: training never imports this package
(``benchmarks/kernel_budget.py``, ``tests/test_kernel_compile.py``)."""
