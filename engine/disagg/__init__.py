"""Prefill/decode disaggregation: prefill engines and decode engines behind one proxy.

    proxy       the DisaggregatedEngine, an EngineClient in front of a deployment's engines
    deployment  building a recipe's deployment (in process, simulated or on Ray)
    handles     the EngineHandle interface and the in-process handle
    ray_engine  engines as Ray actors (the optional `ray` extra; nothing else imports Ray)
    sim_link    a modelled network link between simulated engines

Imports the engine's root (LLMEngine) and every part below it.
"""
