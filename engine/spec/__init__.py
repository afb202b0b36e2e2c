"""Speculative decoding's drafters: each proposes up to k tokens per request and step, which the target
verifies in an ordinary step (kvscope.engine.worker.rejection_sampler).

    drafter              the Drafter interface, n-gram prompt lookup and the factory a recipe picks from
    layerskip_drafter    the target's own first layers
    draft_model_drafter  a separate, smaller model with the target's vocabulary

Imports engine.core, engine.worker and engine.model.
"""
