"""The engine's core bookkeeping, device-free: what runs each step and where its KV lives.

    scheduler      continuous batching under a token budget (chunked prefill, preemption), and the static baseline
    block_manager  physical KV blocks, reference counts, block tables and the prefix cache
    request        a request's state: tokens, progress, blocks, timing
    request_check  what a request must be before an engine queues it
    stop_check     when a request stops; text_delta: its output text as streamable deltas
    kv_connector   one engine's end of a KV transfer (disaggregation), as vLLM names it
    math_utils     integer helpers

Imports engine.model's tokenizer only for text; nothing here touches a tensor but the connector's K/V copy.
"""
