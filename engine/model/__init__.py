"""The model: a Llama-family decoder over a flat token batch and paged KV, and how it is built.

    llama            the decoder (RMSNorm, RoPE, GQA attention, SwiGLU); model code only, no instruments
    attention        the attention backends, the seam between the model and the paged-attention kernels
    forward_context  the per-step context every layer reads
    loader           a model spec's model, config and tokenizer (load_model, load_shape, load_for_recipe)
    model_source     ModelSource: a spec's shape and tokenizer (no weights read) and its weights, one per source:
    random_source    random weights of a preset shape, seeded
    gguf_source      a GGUF file (dequantized with the gguf package)
    hf_source        a Hugging Face folder (config.json, tokenizer.json, *.safetensors)
    preset_source    a published shape with no weights (a simulated device's)
    checkpoint_weights  a checkpoint's tensors as the model's state dict (GGUF and HF names)
    support          what the Llama forward pass can run, and why not
    tokenizer        byte-level BPE from GGUF metadata or tokenizer.json; chat_template: chat prompts

Imports engine.checkpoint (file metadata), the kernels, config and errors.
"""
