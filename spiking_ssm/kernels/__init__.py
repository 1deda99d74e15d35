"""Fused Triton kernels of the SpikingSSM layer, each with a plain torch reference elsewhere in the package.

- :mod:`spiking_ssm.kernels.soma`: the SDN soma (reduced SDN membrane estimate + spikes + surrogate factor in one
  pass) and the SLTT soma (the LIF scan over time, elementwise backward), both on ``[..., L]`` rows in the layer's
  own layout;
- :mod:`spiking_ssm.kernels.vandermonde`: the S4D kernel ``K[c, h, l] = 2 Re sum_n coeff Abar^l`` and its
  gradients without the ``[H, N/2, L]`` Vandermonde matrix;
- :mod:`spiking_ssm.kernels.runtime`: where a Triton kernel can run (CUDA, or CPU tensors under Triton's
  interpreter, ``TRITON_INTERPRET=1``) and the one-line errors when it cannot;
- :mod:`spiking_ssm.kernels.launch`: FP fusion pinned on, no autotuning inside CUDA-graph capture, TF32 off for
  references;
- the chunked current path (:mod:`spiking_ssm.kernels.chunked_conv`) and the SDN soma fused behind it
  (:mod:`spiking_ssm.kernels.chunked_soma`), the exact LIF soma (:mod:`spiking_ssm.kernels.lif_fixed_point`).

Only what a run launches lives here. The tools that compile every kernel for sm_80/sm_90 without a GPU, count its
SASS and model its H100 time are the separate package :mod:`kernel_model` (``benchmarks/kernel_budget.py``,
``tests/test_kernel_compile.py``); nothing in this package imports it.
"""
