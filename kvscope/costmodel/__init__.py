"""The analytic cost model, pure Python: what a step costs and what fits, without running anything.

    roofline        FLOPs and bytes per operator of one forward step
    roofline_bound  which roof (memory bandwidth, compute) limits a piece of work
    roofline_report the one-shot roofline table of `kvscope roofline`
    kv_estimate     KV bytes per token, request and batch, and what fits a device (`kvscope kv`)
    devices         device presets: datasheet peaks and memory sizes
    sim_cost        a simulated device's step time for the step's actual batch
    sim_profile     the efficiency factors `kvscope calibrate` measures and the simulator applies

Imports kvscope.config (model shapes) and kvscope.errors only. The engine prices its kernel events and its
simulated steps with it; the one-shot commands answer from it.
"""
