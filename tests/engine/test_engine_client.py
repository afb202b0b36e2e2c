"""EngineClient (kvscope.engine.engine_client): an LLMEngine and a deployment's proxy are driven alike, by a
RunSession, the server's engine thread and the text probe; what an engine on its own has nothing to say about
(its buses, close, a failure report) it says with a method of its own."""

from __future__ import annotations

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.disagg.deployment import build_local_deployment
from kvscope.engine.disagg.handles import LocalEngine
from kvscope.engine.disagg.proxy import DisaggregatedEngine
from kvscope.engine.engine_client import EngineClient, RequestState, SimulatedTime
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import load_for_recipe
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"model": {"source": "random", "shape": "tiny", "seed": 3}, "dtype": "float32", "device": "cpu",
        "attention_backend": "torch", "cache": {"block_size": 4, "num_blocks": 64},
        "scheduler": {"max_num_batched_tokens": 64, "max_model_len": 128},
        "sampling": {"max_tokens": 6, "ignore_eos": True},
        "workload": {"prompts": ["one prompt", "and another one"]}}
DISAGG = {**BASE, "deployment": {"mode": "disaggregated", "transfer_timeout_s": 30}}
SIM = {**BASE, "device": "sim", "sim": {"gpu": "H100-80GB"}, "dtype": "bfloat16"}
del SIM["attention_backend"]


def typed_clients(engine: LLMEngine, deployment: DisaggregatedEngine) -> list[EngineClient]:
    """Both as a type checker sees them: the assignment fails to check if either falls short."""
    one: EngineClient = engine
    proxy: EngineClient = deployment
    return [one, proxy]


def drive(client: EngineClient, prompts: list[list[int]]) -> list[list[int]]:
    """What every driver does: requests in, steps until none is unfinished, outputs out (then forgotten)."""
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    ids = [client.add_request(p, params) for p in prompts]
    assert client.queue_depths() == (len(prompts), 0)
    for rid in ids:
        assert isinstance(client.requests[rid], RequestState)
    while client.has_unfinished():
        client.step()
    outs = [client.output(rid).token_ids for rid in ids]
    for rid in ids:
        assert client.requests[rid].num_output_tokens == 6 and client.requests[rid].finish_reason == "length"
        client.forget(rid)
    assert not client.requests
    return outs


def test_an_engine_and_a_deployment_are_engine_clients_driven_alike():
    r = Recipe.from_dict(BASE)
    loaded = load_for_recipe(r)
    engine = LLMEngine(r, loaded=loaded)
    deployment = build_local_deployment(Recipe.from_dict(DISAGG), loaded)
    clients = typed_clients(engine, deployment)
    for client in clients:
        assert isinstance(client, EngineClient)
        assert client.sim is None and str(client.device) == "cpu"
        assert client.check_fits(8, 6) == 6 and client.blocks_needed(8, 6) == 4  # 14 tokens, 4 per block
    prompts = [[11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25, 26, 27, 28]]
    assert drive(clients[0], prompts) == drive(clients[1], prompts)  # greedy: the same tokens either way
    assert not isinstance(object(), EngineClient)


def test_an_engine_on_its_own_answers_buses_close_and_failure_report():
    bus = EventBus()
    engine = LLMEngine(Recipe.from_dict(BASE), bus=bus, engine_id="solo")
    assert engine.buses == {"solo": bus}
    assert engine.failure_report() is None
    engine.close()  # nothing to stop: it still serves
    engine.add_request([5, 6, 7], SamplingParams(max_tokens=2))
    while engine.has_unfinished():
        engine.step()
    assert engine.output(0).finish_reason


def test_a_simulated_engine_and_deployment_answer_with_their_virtual_time():
    engine = LLMEngine(Recipe.from_dict(SIM))
    sim_disagg = {**SIM, "deployment": {"mode": "disaggregated"}}
    session = RunSession(Recipe.from_dict(sim_disagg))
    for client in (engine, session.engine):
        assert isinstance(client, EngineClient) and isinstance(client.sim, SimulatedTime)
        before = client.sim.clock()
        client.sim.clock.advance_to(before + 1000)
        assert client.sim.clock() == before + 1000 == client.bus.clock()


def test_a_session_drives_either_through_the_client_and_names_a_deployment():
    single = RunSession(Recipe.from_dict(BASE))
    assert single.deployment is None and single.buses == {"engine": single.bus}
    single.run()
    assert single.failure_report() is None and single.snapshot_tables() == {}
    single.close()

    session = RunSession(Recipe.from_dict(DISAGG))
    assert session.deployment is session.engine and isinstance(session.engine, DisaggregatedEngine)
    assert set(session.buses) == {"prefill-0", "decode-0"}
    assert all(isinstance(h, LocalEngine) and h.engine is not None for h in session.deployment.engines.values())
    assert session.deployment.clock_offsets() == {name: {"offset_ns": 0, "rtt_ns": 0} for name in session.buses}
    session.run()
    assert session.failure_report() is None and len(session.outputs) == 2
    with pytest.raises(TypeError, match="this session runs a deployment"):
        session.snapshot_tables()
    session.close()
