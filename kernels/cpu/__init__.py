"""C kernels for the CPU, built at first use for the machine (c_library: cached under ~/.cache/kvscope)
and called through ctypes: the matmul (linear_cpu), paged attention (attention_cpu), RMSNorm and RoPE
(norm_rope_cpu), SwiGLU (activation_cpu) and the whole-step decode program (decode_cpu). Each .py holds the
binding and, beside it, the torch reference or kvscope.kernels.reference. Imports torch only."""
