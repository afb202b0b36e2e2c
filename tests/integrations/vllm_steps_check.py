"""Run inside the vLLM venv (tests/integrations/test_vllm_plugin.py starts it): vLLM's offline LLM, in one
process, with kvscope's plugin on. After every schedule() and update_from_output() the plugin has observed,
the state folded from the plugin's events alone (the relay's EngineView) is compared with vLLM's own
KVCacheManager and BlockPool: each request's block table, every block's ref count and whether it holds a
hash, and the free count. A small pool forces preemptions, shared prompt prefixes force prefix hits,
a small token budget forces chunked prefill. Then a hook is made to raise: the plugin must switch itself off
and vLLM must still answer, the same text. Prints one JSON line of findings.
"""

import json
import os
import sys

os.environ.update({"KVSCOPE_VLLM": "1", "VLLM_PLUGINS": "kvscope", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})


def vllm_state(sched, tracker):
    manager = sched.kv_cache_manager.coordinator.single_type_managers[0]
    tables = {tracker.seen[r].rid: [b.block_id for b in bl] for r, bl in manager.req_to_blocks.items()
              if bl and r in tracker.seen}
    pool = sched.kv_cache_manager.block_pool
    refs = [b.ref_cnt for b in pool.blocks]
    hashed = [b.block_hash is not None for b in pool.blocks]
    return tables, refs, hashed, pool.get_num_free_blocks()


def view_state(view):
    free = sum(1 for b in range(1, len(view.block_refs)) if view.block_refs[b] == 0)
    return ({r: list(t) for r, t in view.tables.items() if t}, list(view.block_refs),
            [h != 0 for h in view.block_hash], free)


def main() -> None:
    model = sys.argv[1]
    from vllm import LLM, SamplingParams
    from vllm.v1.core.sched.scheduler import Scheduler

    from kvscope.integrations.vllm import plugin

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=256, block_size=32,
              num_gpu_blocks_override=20, max_num_seqs=6, max_num_batched_tokens=64, enable_prefix_caching=True,
              seed=0)
    hooks, relay = plugin._Installed.hooks, plugin.relay()
    assert hooks is not None and relay is not None and hooks.active, "the plugin did not install"
    findings = {"checks": 0, "mismatches": [], "preempted": 0, "prefix_hits": 0, "events": 0}
    observed = {"schedule": Scheduler.schedule, "update_from_output": Scheduler.update_from_output}

    def check(sched, where):
        tracker = hooks.trackers.get(sched)
        if tracker is None or not hooks.active:
            return
        ours, theirs = view_state(relay.view), vllm_state(sched, tracker)
        findings["checks"] += 1
        for name, a, b in zip(("tables", "ref counts", "hashed", "free blocks"), ours, theirs):
            if name in ("ref counts", "hashed"):
                a, b = a[1:], b[1:]  # block 0: vLLM's null block, never handed out
            if a != b and len(findings["mismatches"]) < 5:
                findings["mismatches"].append(f"step {tracker.step} {where}: {name}: kvscope {a} vLLM {b}")

    def schedule(sched, *a, **k):
        out = observed["schedule"](sched, *a, **k)
        check(sched, "after schedule")
        return out

    def update(sched, *a, **k):
        out = observed["update_from_output"](sched, *a, **k)
        check(sched, "after update")
        return out

    Scheduler.schedule, Scheduler.update_from_output = schedule, update
    shared = "You are a helpful assistant. Answer briefly and precisely, in one sentence. " * 3
    prompts = [shared + q for q in ("What is a cat?", "What is a dog?", "Why is the sky blue?", "Name a planet.",
                                    "What is two plus two?", "Who wrote Hamlet?", "What is rain?", "Define paging.")]
    params = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)
    import time

    started = time.perf_counter_ns()
    first = [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]
    findings["observe_share"] = hooks.observe_ns / (time.perf_counter_ns() - started)
    findings["observe_us_per_call"] = hooks.observe_ns / max(hooks.calls, 1) / 1000
    with relay.lock:
        findings["events"] = relay.hub.last_id
        findings["preempted"] = sum(r.preemptions for r in relay.view.requests.values())
        findings["requests"] = len(relay.view.requests)
        findings["finished"] = sum(1 for r in relay.view.requests.values() if r.status == "finished")
        findings["used_at_end"] = sum(1 for b in relay.view.block_refs[1:] if b)
        findings["prefix_hits"] = sum(1 for _, e in relay.hub.read_after(0).events
                                      if e.kind == "block" and e.what == "prefix_hit")
    # a hook that raises: the plugin must step aside, and vLLM answer as before
    from kvscope.integrations.vllm.tracker import VllmTracker

    def broken(self, sched, out):
        raise RuntimeError("injected")

    VllmTracker.after_update = broken
    again = [o.outputs[0].text for o in llm.generate(prompts[:3], params, use_tqdm=False)]
    findings["disabled_after_error"] = (not hooks.active) and hooks.error == "RuntimeError: injected"
    findings["same_text_after_error"] = again == first[:3]
    findings["restored"] = Scheduler.schedule is hooks.originals["schedule"]
    print("FINDINGS " + json.dumps(findings))


if __name__ == "__main__":
    main()
