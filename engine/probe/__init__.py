"""The instruments beside the engine (never inside the model): a step's phase times, live ranges and
events.

    step_probe     StepProbe: a step's phases, ranges and events (a null probe when nothing listens)
    op_timer       per-operator timing attached to a model from outside it
    kernel_events  the op timer's records joined with the cost model's FLOPs and bytes
    nvtx_ranges    NVTX ranges (domain "kvscope") for Nsight Systems

Imports engine.core, the events and the cost model.
"""
