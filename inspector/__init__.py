"""The inspector: folds over the event stream, the metrics, and exporters.

    event_fold       the base of every consumer that folds events
    state            engine state rebuilt from events alone (pool, block tables, lifecycles)
    metrics          THE one place TTFT, ITL, E2E, throughput and KV usage are computed
    step_history / batch_timeline / token_stream   per-step records, who ran in each step, the text
    spec_metrics / pd_metrics    speculation and KV-transfer statistics
    bench_report / capacity / calibration   `kvscope bench`'s rows, capacity search, simulator calibration
    stream_check     what a well-formed event stream is; human_units: numbers for people
    export/          Chrome/Perfetto traces, NVTXT, JSONL recordings and replay, SVG and terminal plots
    live/            a live run: the run controller, device readings, measured peaks

May import the engine, the cost model, config, events and errors; never the TUI, serve or the cli.
"""
