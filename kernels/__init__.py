"""Kernels: pure functions over tensors, a torch reference beside each fast version.

    reference/  torch: paged attention, KV writes, RMSNorm and RoPE (the oracles)
    triton/     Triton paged attention (split-KV decode, varlen prefill), RMSNorm and RoPE
    cpu/        C kernels built at first use (matmul, paged attention, norms and RoPE, SwiGLU, the whole-step
                decode program) and the ctypes bindings to them

Imports torch (and triton) only: nothing of kvscope.
"""
