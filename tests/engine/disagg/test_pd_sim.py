"""Disaggregation on simulated devices: the engines keep their own virtual clocks and step in time order, a
transfer costs exactly what the modelled link says, nothing happens before its cause, and the pools end
empty."""

from __future__ import annotations

import itertools

import pytest

from kvscope.config.recipe import Recipe
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventList
from kvscope.events.records import KVTransfer, RequestEvent, StepEnd
from kvscope.events.vocabulary import ARRIVED, FIRST_TOKEN

SIM = {"model": {"source": "preset", "name": "llama-3.1-70b"}, "dtype": "bfloat16", "device": "sim",
       "sim": {"gpu": "H100-80GB", "num_gpus": 4, "tp": 4}, "cache": {"block_size": 16},
       "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 1024, "max_model_len": 4096},
       "sampling": {"ignore_eos": True},
       "deployment": {"mode": "disaggregated", "link_gb_s": 25, "link_latency_us": 20},
       "workload": {"synthetic": {"num_requests": 12, "prompt_len": {"min": 200, "max": 1500},
                                  "output_len": {"min": 20, "max": 60}, "arrival_rate": 4.0, "seed": 3}}}


@pytest.fixture(scope="module")
def run():
    session = RunSession(Recipe.from_dict(SIM))
    streams = {name: bus.subscribe(EventList()) for name, bus in session.buses.items()}
    client = session.bus.subscribe(EventList())
    session.run()
    return session, {n: s.events for n, s in streams.items()}, client.events


def test_every_request_finishes_and_the_pools_end_empty(run):
    session, _, _ = run
    assert len(session.outputs) == 12 and all(o.finish_reason == "length" for o in session.outputs.values())
    for name in ("prefill-0", "decode-0"):
        engine = session.engine.local_engine(name)
        assert engine.block_manager.num_free_blocks == engine.num_blocks and not engine.connector.pinned
    items = dict(enumerate(session.items))
    for rid, out in session.outputs.items():
        assert len(out.token_ids) == items[rid].params.max_tokens


def test_a_transfer_costs_what_the_link_says_and_follows_its_prefill(run):
    session, streams, _ = run
    transfers = [e for e in streams["decode-0"] if isinstance(e, KVTransfer)]
    assert len(transfers) == 12
    bytes_per_block = session.engine.local_engine("decode-0").bytes_per_block
    finished_prefill = {e.request_id: e.ts for e in streams["prefill-0"]
                        if isinstance(e, RequestEvent) and e.what == "finished"}
    first_step_after = {}
    for e in streams["decode-0"]:
        if isinstance(e, StepEnd):
            for rid in e.decode:
                first_step_after.setdefault(rid, e.begin_ts)
    for t in transfers:
        assert t.bytes == len(t.dst_block_ids) * bytes_per_block
        assert t.send_end - t.send_start == round((20e-6 + t.bytes / 25e9) * 1e9)  # the link's time for it
        assert t.recv_start >= finished_prefill[t.src_request_id]  # the decode side never reads before the prompt ran
        assert t.recv_start <= t.send_start and t.send_end <= t.recv_end  # landed once the link carried it
        assert first_step_after[t.dst_request_id] >= t.recv_end
    reads = sorted((t.send_start, t.send_end) for t in transfers)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(reads))  # one transfer at a time


def test_client_ttft_contains_the_transfer(run):
    _, streams, client = run
    arrived = {e.request_id: e.ts for e in client if isinstance(e, RequestEvent) and e.what == ARRIVED}
    first = {e.request_id: e.ts for e in client if isinstance(e, RequestEvent) and e.what == FIRST_TOKEN}
    transfers = {t.src_request_id: t for t in streams["decode-0"] if isinstance(t, KVTransfer)}
    assert set(first) == set(arrived) == set(transfers)  # one prefill engine: the ids are the proxy's too
    for rid, t in transfers.items():
        assert arrived[rid] <= t.recv_start and t.recv_end <= first[rid]


def test_sim_over_ray_is_refused_in_one_line():
    from kvscope.errors import RecipeError

    with pytest.raises(RecipeError, match="simulated engines run in this process"):
        Recipe.from_dict(dict(SIM, deployment={"mode": "disaggregated", "transport": "ray"}))
