"""A simulated device (`device: sim`): the whole engine, with only the forward pass replaced by the cost
model's time for the step's actual batch, on a virtual clock. No weights; the KV pool is bookkeeping.

    setup   the GPU preset, the checks, the pool as `kvscope kv` sizes it
    runner  ModelRunner's prepare / forward / sample, priced instead of run
    probe   the step probe with estimated kernels
    speculation  speculative decoding: the drafts' cost and the acceptance model

Imports engine.core, engine.probe, engine.model (the tokenizer) and the cost model.
"""
