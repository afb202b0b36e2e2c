"""C kernels for the CPU, built at first use for the machine (c_library: cached under ~/.cache/kvscope, one library
per source and build, KVSCOPE_CPU_ISA = native | portable | avx512, see kvscope_isa.h) and called through ctypes:
the matmul (linear_cpu), paged attention (attention_cpu), RMSNorm and RoPE (norm_rope_cpu), SwiGLU
(activation_cpu) and the whole-step decode program (decode_cpu). Each .py holds the binding and, beside it, the
torch reference or kvscope.kernels.reference. A struct a binding mirrors in ctypes is checked at load against
the layout its library exports (c_struct, kvscope_layout.h). Imports torch only."""
