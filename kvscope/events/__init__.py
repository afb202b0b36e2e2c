"""The event schema: the contract between the engine and every instrument (pure Python: no torch, numpy or
textual), below everything that uses it.

    vocabulary  what records say: kinds, step phases, range categories, request and block words
    records     the event records (RunInfo, StepBegin/End, RequestEvent, BlockEvent, KernelEvent, KVSnapshot,
                TokenText, SpecDecode, KVTransfer)
    codec       records as JSON objects and back (recordings, the server's event stream)
    bus         the EventBus that fans them out, and the clock that stamps them

It imports nothing of kvscope.
"""
