"""Running a scheduled step on a device: the batch, the forward pass, the KV pools, the sampler.

    model_runner      a SchedulerOutput as one flat, unpadded token batch; forward; sample
    kv_cache          the paged K and V pools, one per layer
    sampler           greedy, temperature, top-k, top-p, per-request seeds
    rejection_sampler exact verification of draft tokens (speculative decoding)
    cuda_graphs       decode steps captured once per batch size and replayed (GPU)
    decode_program    a CPU decode step as one C call (kvscope.kernels.cpu.decode_cpu)

Imports engine.core, engine.model and the kernels.
"""
