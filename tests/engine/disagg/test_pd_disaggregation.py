"""Prefill/decode disaggregation in one process, on the tiny random model: the same greedy tokens as one
engine, K/V that lands in re-mapped blocks, prefix-cache hits that skip the transfer, and no block leaked
when a transfer is aborted, never read, or fails."""

from __future__ import annotations

import json
import random
import time

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.disagg.deployment import build_local_deployment
from kvscope.engine.llm import LLM
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import load_for_recipe
from kvscope.errors import RecipeError
from kvscope.events.bus import EventList
from kvscope.events.records import KVTransfer
from kvscope.events.vocabulary import FREE, KV_PIN, PREFIX_HIT
from support.trace_checks import check_chrome_trace

BS = 4
BASE = {"model": {"source": "random", "shape": "tiny", "seed": 3}, "dtype": "float32", "device": "cpu",
        "attention_backend": "torch", "workload": {"prompts": ["-"]},
        "cache": {"block_size": BS, "num_blocks": 96, "prefix_caching": True},
        "scheduler": {"max_num_batched_tokens": 64}}
DISAGG = dict(BASE, deployment={"mode": "disaggregated", "transfer_timeout_s": 30})
GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def loaded(one_torch_thread):
    return load_for_recipe(Recipe.from_dict(BASE))


def prompts_of(lengths: list[int], seed: int = 0, prefix: list[int] | None = None) -> list[list[int]]:
    rng = random.Random(seed)
    return [(prefix or []) + [rng.randrange(10, 250) for _ in range(n)] for n in lengths]


def reference(loaded, prompts: list[list[int]]) -> list[list[int]]:
    return [o.token_ids for o in LLM(Recipe.from_dict(BASE), loaded=loaded).generate(prompts, GREEDY)]


def run(dep, prompts: list[list[int]], max_steps: int = 500) -> dict[int, list[int]]:
    ids = [dep.add_request(p, GREEDY) for p in prompts]
    outs = {}
    for _ in range(max_steps):
        if not dep.has_unfinished():
            break
        for o in dep.step():
            outs[o.request_id] = o
    assert not dep.has_unfinished()
    return [outs[i].token_ids for i in ids]


def assert_pools_clean(dep) -> None:
    for h in dep.prefill + dep.decode:
        bm = h.engine.block_manager
        assert bm.num_free_blocks == bm.num_blocks, h.name
        assert not h.engine.connector.pinned and not h.engine.connector.pending
        assert all(r == 0 for r in bm.ref_counts)


def subscribe(dep) -> dict[str, EventList]:
    return {name: bus.subscribe(EventList()) for name, bus in dep.buses.items()}


def test_greedy_tokens_equal_one_engine_including_prompts_shorter_than_a_block(loaded):
    prompts = prompts_of([1, 3, 4, 5, 8, 13, 30])  # below, at and across block boundaries (block size 4)
    dep = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    events = subscribe(dep)
    assert run(dep, prompts) == reference(loaded, prompts)
    transfers = [e for e in events["decode-0"].events if isinstance(e, KVTransfer)]
    assert len(transfers) == len(prompts) and all(t.ok for t in transfers)
    for t, p in zip(sorted(transfers, key=lambda t: t.src_request_id), prompts):
        assert t.num_tokens == len(p)
        assert len(t.src_block_ids) == len(t.dst_block_ids) == -(-len(p) // BS)
        assert t.bytes == len(t.dst_block_ids) * dep.prefill[0].engine.bytes_per_block
        assert t.recv_start <= t.send_start <= t.send_end <= t.recv_end
    pins = [e for e in events["prefill-0"].events if getattr(e, "what", "") == KV_PIN]
    assert len(pins) == len(prompts)
    assert_pools_clean(dep)


def test_fragmented_decode_pool_remaps_block_ids(loaded):
    """Blocks held on the decode side before the transfer (every other one): the K/V lands elsewhere."""
    dep = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    decode = dep.decode[0].engine
    holders = [decode.add_request(p, SamplingParams(max_tokens=40, ignore_eos=True)) for p in prompts_of([3] * 8, 7)]
    decode.step()  # 8 requests hold one block each
    for rid in holders[::2]:
        decode.abort(rid)  # free every other block: holes at the head of the free queue
    held = {b for rid in holders[1::2] for b in decode.requests[rid].block_table}
    events = subscribe(dep)
    prompts = prompts_of([9, 17, 6], 1)
    assert run(dep, prompts, max_steps=200) == reference(loaded, prompts)  # the holders decode alongside
    transfers = [e for e in events["decode-0"].events if isinstance(e, KVTransfer)]
    assert any(t.dst_block_ids != t.src_block_ids for t in transfers)
    assert all(not (set(t.dst_block_ids) & held) for t in transfers)


def test_decode_side_prefix_hits_skip_their_blocks(loaded):
    shared = prompts_of([12], 5)[0]  # three full blocks every prompt starts with
    first = prompts_of([5], 11, shared)
    later = prompts_of([2, 7, 9], 12, shared)
    dep = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    run(dep, first)  # the shared blocks are cached on both sides now
    events = subscribe(dep)
    assert run(dep, later) == reference(loaded, later)
    transfers = [e for e in events["decode-0"].events if isinstance(e, KVTransfer)]
    hits = [e for e in events["decode-0"].events if getattr(e, "what", "") == PREFIX_HIT]
    assert len(hits) == len(later) and all(len(h.block_ids) == 3 for h in hits)
    for t, p in zip(sorted(transfers, key=lambda t: t.dst_request_id), later):
        assert t.num_tokens == len(p) - 12 and len(t.dst_block_ids) == -(-len(p) // BS) - 3
    assert_pools_clean(dep)


def test_abort_mid_transfer_frees_both_sides(loaded):
    dep = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    prefill, decode = dep.prefill[0].engine, dep.decode[0].engine
    rid = dep.add_request(prompts_of([10])[0], GREEDY)
    dep.step()  # the prompt ran; its blocks are pinned; the decode engine has the request queued
    assert prefill.connector.pinned and prefill.block_manager.num_free_blocks < prefill.num_blocks
    decode.scheduler.schedule(decode.step_id)  # admitted: its blocks allocated, the load pending
    (req,) = decode.scheduler.loading
    assert req.block_table and decode.connector.pending
    assert dep.abort(rid)
    assert_pools_clean(dep)
    assert not dep.has_unfinished() and dep.output(rid).finish_reason == "abort"
    # aborted while still queued on the decode side (before admission): the pins go too
    dep2 = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    rid = dep2.add_request(prompts_of([10])[0], GREEDY)
    dep2.step()
    assert dep2.prefill[0].engine.connector.pinned
    assert dep2.abort(rid)
    assert_pools_clean(dep2)


def test_unread_pins_are_freed_after_the_timeout(loaded):
    recipe = Recipe.from_dict(dict(DISAGG, deployment={"mode": "disaggregated", "transfer_timeout_s": 0.05}))
    prefill = LLMEngine(recipe, loaded=loaded, kv_role="kv_producer", engine_id="prefill-0")
    events = prefill.bus.subscribe(EventList())
    prefill.add_request(prompts_of([9])[0], SamplingParams(max_tokens=1), do_remote_decode=True)
    (out,) = prefill.step()
    params = out.kv_transfer_params
    assert params is not None and params.remote_block_ids and prefill.has_pinned()
    assert prefill.block_manager.num_free_blocks == prefill.num_blocks - len(params.remote_block_ids)
    deadline = time.monotonic() + 5
    while prefill.has_pinned() and time.monotonic() < deadline:
        time.sleep(0.01)
        prefill.expire_transfers()
    assert not prefill.has_pinned()
    assert prefill.block_manager.num_free_blocks == prefill.num_blocks
    frees = [e for e in events.events if getattr(e, "what", "") == FREE]
    assert frees and frees[-1].block_ids == params.remote_block_ids


def test_a_failed_read_ends_the_request_with_one_reason_and_frees_its_blocks(loaded):
    class DeadPeer:
        transport, clock_offset_ns = "test", 0

        def start_read(self, transfer_id, block_ids):
            raise ConnectionError("the producer is gone")

        def release_kv(self, transfer_id):
            raise ConnectionError("the producer is gone")

    dep = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    dep.decode[0].engine.kv_peers["prefill-0"] = DeadPeer()
    prompts = prompts_of([6, 9])
    ids = [dep.add_request(p, GREEDY) for p in prompts]
    for _ in range(20):
        if not dep.has_unfinished():
            break
        dep.step()
    assert {dep.output(i).finish_reason for i in ids} == {"error"}
    report = dep.failure_report()
    assert report.count("\n") == 0 and "requests 0, 1 failed" in report and "the producer is gone" in report
    decode = dep.decode[0].engine
    assert decode.block_manager.num_free_blocks == decode.num_blocks


def test_max_tokens_one_and_a_stop_at_the_first_token_never_reach_the_decode_side(loaded):
    dep = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    events = subscribe(dep)
    (p,) = prompts_of([7])
    ref = reference(loaded, [p])[0]
    one = dep.add_request(p, SamplingParams(max_tokens=1))
    stop = dep.add_request(p, SamplingParams(max_tokens=10, stop_token_ids=[ref[0]]))
    for _ in range(10):
        if not dep.has_unfinished():
            break
        dep.step()
    assert dep.output(one).token_ids == ref[:1] and dep.output(one).finish_reason == "length"
    assert dep.output(stop).token_ids == ref[:1] and dep.output(stop).finish_reason == "stop"
    assert not events["decode-0"].events
    assert_pools_clean(dep)


def test_trace_has_a_process_per_engine_and_transfers_between_the_steps(loaded, tmp_path):
    from kvscope.cli.main import main

    recipe = tmp_path / "pd.yaml"
    recipe.write_text(json.dumps(dict(DISAGG, workload={"synthetic": {
        "num_requests": 6, "prompt_len": {"min": 2, "max": 20}, "output_len": {"min": 3, "max": 8}}})))
    assert main(["trace", str(recipe), "-o", str(tmp_path / "out")]) == 0
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    check_chrome_trace(trace)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert {"prefill-0: kvscope engine", "decode-0: kvscope engine", "prefill-0: requests", "decode-0: requests",
            "KV transfer"} <= names
    check_transfers_between_steps(trace)


def check_transfers_between_steps(trace: dict) -> int:
    """Every transfer slice starts after its prefill request's last prefill step ended and ends before its
    decode request's first decode step began (both found on the request threads of the engines' processes)."""
    events = trace["traceEvents"]
    pid_of = {e["args"]["name"]: e["pid"] for e in events if e["name"] == "process_name"}
    work: dict[tuple[int, int], list[dict]] = {}
    for e in events:
        if e["ph"] == "X" and e["name"] in ("prefill", "decoding"):
            work.setdefault((e["pid"], e["tid"] - 1), []).append(e)
    transfers = [e for e in events if e["ph"] == "X" and e.get("cat") == "kv_transfer" and "from" in e["args"]]
    assert transfers
    for t in transfers:
        src_engine, _, src_rid = t["args"]["from"].split(" ")
        dst_engine, _, dst_rid = t["args"]["to"].split(" ")
        prefills = [e for e in work[(pid_of[f"{src_engine}: requests"], int(src_rid))] if e["name"] == "prefill"]
        decodes = [e for e in work[(pid_of[f"{dst_engine}: requests"], int(dst_rid))] if e["name"] == "decoding"]
        assert max(e["ts"] + e["dur"] for e in prefills) <= t["ts"]
        assert t["ts"] + t["dur"] <= min(e["ts"] for e in decodes)
    return len(transfers)


def test_recipe_refuses_what_disaggregation_does_not_combine_with():
    with pytest.raises(RecipeError, match="deployment.mode: disaggregated does not combine with speculative"):
        Recipe.from_dict(dict(DISAGG, speculative={"method": "ngram"}))
    with pytest.raises(RecipeError, match="deployment.transport: must be one of"):
        Recipe.from_dict(dict(BASE, deployment={"mode": "disaggregated", "transport": "tcp"}))


def test_ray_missing_is_one_line(monkeypatch):
    import sys

    from kvscope.engine.disagg.ray_engine import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RecipeError) as err:
        require_ray("pd.yaml")
    assert "\n" not in str(err.value) and "pip install 'kvscope[ray]'" in str(err.value)
