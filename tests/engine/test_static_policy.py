"""The static baseline behaves like a padded static batch: fixed batches, max-length reservations,
padding computed and thrown away, and the same greedy tokens as continuous batching."""

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM
from kvscope.events.bus import EventBus, EventList

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15, 16], [17, 18, 19, 20, 21]]
MAX_TOKENS = [2, 6, 3, 5]


def run(policy: str):
    bus = EventBus()
    events = bus.subscribe(EventList())
    llm = LLM({"model": {"source": "random", "shape": "tiny-gqa3", "seed": 1},
               "cache": {"block_size": 4, "num_blocks": 64},
               "scheduler": {"policy": policy, "max_num_seqs": 2}}, bus=bus)
    outs = llm.generate(PROMPTS, [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS])
    steps = [e for e in events.events if e.kind == "step_end"]
    return [o.token_ids for o in outs], steps, events.events


def test_static_pads_prompts_and_finished_seats_and_keeps_tokens():
    static_tokens, steps, events = run("static")
    continuous_tokens, cont_steps, _ = run("continuous")
    assert static_tokens == continuous_tokens
    assert all(s.padding_tokens == 0 for s in cont_steps)
    # batch 1 = requests 0 and 1: prompts 3 and 7 tokens, outputs 2 and 6
    assert steps[0].padding_tokens == 7 - 3
    # request 0 finishes after its 2nd token; its seat decodes padding until request 1's 6th token
    pads_batch1 = [s.padding_tokens for s in steps[1:6]]
    assert pads_batch1 == [0, 1, 1, 1, 1]
    # batch 2 = requests 2 and 3 starts only after batch 1 is done: prompts 2 and 5 -> 3 pad tokens
    assert steps[6].padding_tokens == 5 - 2 and {rid for rid, _ in steps[6].prefill} == {2, 3}
    # each request reserved its batch's longest prompt + longest output up front
    allocs = {e.request_id: len(e.block_ids) for e in events if e.kind == "block" and e.what == "alloc"}
    assert allocs[0] == allocs[1] == -(-(7 + 6) // 4) and allocs[2] == allocs[3] == -(-(5 + 5) // 4)


def test_padding_is_summed_shared_out_and_shown_in_the_summary_the_bench_table_and_the_trace():
    from kvscope.cli.summary_table import summary_rows
    from kvscope.inspector.bench_report import TABLE_COLUMNS
    from kvscope.inspector.export.chrome_trace import build_chrome_trace
    from kvscope.inspector.metrics import summarize

    _, steps, events = run("static")
    summary = summarize(events)
    pads, tokens = sum(s.padding_tokens for s in steps), sum(s.num_tokens for s in steps)
    # batch 1: 4 prompt pads + 4 seat-steps after request 0 ends; batch 2: 3 prompt pads + 2 seat-steps
    assert summary.padding_tokens == pads == 4 + 4 + 3 + 2
    assert summary.padding_share == pads / (tokens + pads)
    assert dict(summary_rows(summary))["padding"].startswith(f"{pads} tokens computed and thrown away")
    cell = dict(TABLE_COLUMNS)["padding"]
    assert cell(summary) == f"{100 * summary.padding_share:.1f}%"
    counters = [e for e in build_chrome_trace(events)["traceEvents"] if e.get("name") == "tokens per step"]
    assert sum(c["args"]["padding"] for c in counters) == pads
    _, _, continuous = run("continuous")
    assert summarize(continuous).padding_tokens == 0 and "padding" not in dict(summary_rows(summarize(continuous)))
