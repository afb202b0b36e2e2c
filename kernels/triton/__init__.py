"""Triton kernels (GPU; on a CPU under TRITON_INTERPRET=1): paged attention (KV write, split-KV
decode, varlen prefill), RMSNorm fused with the residual add, RoPE. Imports torch and triton only."""
