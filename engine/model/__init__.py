"""The model: a Llama-family decoder over a flat token batch and paged KV, and how it is built.

    llama            the decoder (RMSNorm, RoPE, GQA attention, SwiGLU); model code only, no instruments
    attention        the attention backends, the seam between the model and the paged-attention kernels
    forward_context  the per-step context every layer reads
    loader           weights from random seeds, a GGUF file or a Hugging Face folder
    support          what the Llama forward pass can run, and why not
    tokenizer        byte-level BPE from GGUF metadata or tokenizer.json; chat_template: chat prompts

Imports engine.checkpoint (file metadata), the kernels, config and errors.
"""
