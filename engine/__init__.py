"""The engine: a paged, continuously batched LLM engine (vLLM v1's seams, nano-vllm's size).

    llm_engine  LLMEngine: add_request / step / has_unfinished; one step = schedule, prepare, forward, sample
    executor    the engine's device side, chosen once: the real runner + KV pools + backend + probe, or simulated
    engine_client  EngineClient: what drives an engine (LLMEngine, a deployment's proxy) from outside it
    llm         the offline API, `LLM(recipe).generate(prompts, SamplingParams)`
    session     RunSession: a recipe's workload fed to an engine as it arrives, one step at a time
    workload    the requests a recipe describes
    core/       scheduling and KV bookkeeping: scheduler, block manager, requests, stop rules, KV connector
    worker/     running a step on a device: model runner, KV pools, sampler, CUDA graphs, CPU decode programs
    model/      the Llama-family model, its attention seam, loading and the tokenizer
    checkpoint/ model files read without torch: GGUF headers, config.json, the packaged SmolLM2
    spec/       speculative decoding's drafters
    disagg/     prefill/decode disaggregation: the proxy, engine handles (in process, Ray), simulated links
    sim/        a simulated device: the forward pass priced by the cost model on a virtual clock
    probe/      the instruments beside the engine: step probe, op timer, kernel events, NVTX ranges

May import kernels, the cost model, config, events and errors; never the inspector, the TUI, serve or the cli.
"""
