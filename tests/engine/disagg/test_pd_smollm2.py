"""Disaggregated SmolLM2 gives transformers' greedy tokens, in one process and on Ray actors; a killed actor
fails its requests in one line and leaks no block on the engine that remains.

Prompts below, at and across a block (block size 16), a shared prefix that the decode side has cached by
the time the later prompts arrive (their transfer skips those blocks), and a decode pool fragmented before
the transfer (ids re-mapped). The oracle is Hugging Face transformers on the same GGUF (tests/support/hf_oracle.py).
All Ray tests share one `ray.init(num_cpus=2, include_dashboard=False)` (tests/conftest.py's ray_session).
"""

from __future__ import annotations

import pytest

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.disagg.deployment import build_local_deployment, build_ray_deployment
from kvscope.engine.model.loader import load_for_recipe
from kvscope.events.bus import EventList
from kvscope.events.records import KVTransfer
from kvscope.events.vocabulary import PREFIX_HIT
from support.hf_oracle import hf_greedy

pytestmark = pytest.mark.slow

NEW_TOKENS = 12
BS = 16
BASE = {"model": {"source": "gguf", "path": "smollm2"}, "dtype": "float32", "device": "cpu",
        "attention_backend": "torch", "workload": {"prompts": ["-"]},
        "cache": {"block_size": BS, "num_blocks": 64, "prefix_caching": True}}
SHARED = ("You are a helpful assistant. Answer in one short sentence, and never mention that you are an "
          "assistant. Question: ")
TEXTS = ["Hi", "The capital of France is", "Name three colours of the rainbow.", "What is two plus two?"]


def disagg(transport: str) -> Recipe:
    return Recipe.from_dict(dict(BASE, deployment={"mode": "disaggregated", "transport": transport}))


@pytest.fixture(scope="module")
def loaded():
    return load_for_recipe(Recipe.from_dict(BASE))


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:
    tok = loaded.tokenizer
    short = [tok.encode(t) for t in TEXTS[:2]]  # 2 and 6 tokens: below one block
    shared = [tok.encode(SHARED + t) for t in TEXTS]  # the prefix spans full blocks
    return short + shared


@pytest.fixture(scope="module")
def expected(prompts) -> list[list[int]]:
    return hf_greedy(prompts, NEW_TOKENS)


def run_waves(dep, prompts: list[list[int]], waves: list[list[int]]) -> dict[int, list[int]]:
    """Run the prompts in waves (indices), each to its end before the next: later waves find the earlier
    ones' blocks cached."""
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    got: dict[int, list[int]] = {}
    for wave in waves:
        ids = {dep.add_request(prompts[i], params): i for i in wave}
        for _ in range(400):
            if not dep.has_unfinished():
                break
            for out in dep.step():
                got[ids[out.request_id]] = out.token_ids
        assert not dep.has_unfinished()
    return got


def check(dep, prompts, expected, events) -> None:
    got = run_waves(dep, prompts, [[0, 1, 2], [3, 4, 5]])
    assert [got[i] for i in range(len(prompts))] == expected
    transfers = [e for e in events.events if isinstance(e, KVTransfer)]
    assert len(transfers) == len(prompts) and all(t.ok for t in transfers)
    hits = [e for e in events.events if getattr(e, "what", "") == PREFIX_HIT]
    assert hits, "the second wave's shared prefix should be cached on the decode side"
    second_wave = sorted(transfers, key=lambda t: t.recv_start)[-3:]  # the shared prefix's blocks are not moved
    longest = max(len(p) for p in prompts[3:])
    assert all(t.num_tokens <= longest - BS and len(t.dst_block_ids) < -(-longest // BS) for t in second_wave)


def test_inprocess_matches_transformers(loaded, prompts, expected):
    dep = build_local_deployment(disagg("inprocess"), loaded)
    decode = dep.decode[0].engine
    from kvscope.config.sampling_params import SamplingParams as P

    holders = [decode.add_request(prompts[0], P(max_tokens=60, ignore_eos=True)) for _ in range(6)]
    decode.step()
    for rid in holders[::2]:
        decode.abort(rid)  # a fragmented decode pool: the transferred K/V lands in re-mapped blocks
    events = dep.buses["decode-0"].subscribe(EventList())
    check(dep, prompts, expected, events)
    assert any(t.dst_block_ids != t.src_block_ids for t in events.events if isinstance(t, KVTransfer))


def test_ray_matches_transformers_and_a_killed_actor_fails_its_requests(ray_session, prompts, expected):
    dep = build_ray_deployment(disagg("ray"))
    events = dep.buses["decode-0"].subscribe(EventList())
    check(dep, prompts, expected, events)
    assert {t.transport for t in events.events if isinstance(t, KVTransfer)} == {"ray"}
    assert all(h.pool()["free"] == h.pool()["total"] for h in dep.engines.values())

    # the prefill actor dies with prompts handed over but not yet read: those requests fail, in one line
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    ids = [dep.add_request(p, params) for p in prompts[2:5]]
    dep.step()  # the prompts ran on the prefill actor and went to the decode actor
    dep.engines["prefill-0"].kill()
    for _ in range(100):
        if not dep.has_unfinished():
            break
        dep.step()
    report = dep.failure_report()
    assert report is not None and "\n" not in report
    assert f"requests {', '.join(map(str, ids))} failed" in report and "prefill-0" in report
    pool = dep.engines["decode-0"].pool()
    assert pool["free"] == pool["total"] and pool["unfinished"] == 0


def test_ray_decode_actor_killed_releases_the_prefill_pins(ray_session):
    recipe = Recipe.from_dict({"model": {"source": "random", "shape": "tiny", "seed": 3}, "attention_backend": "torch",
                               "workload": {"prompts": ["-"]}, "cache": {"block_size": 4, "num_blocks": 64},
                               "deployment": {"mode": "disaggregated", "transport": "ray"}})
    dep = build_ray_deployment(recipe)
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    ids = [dep.add_request(list(range(20, 20 + n)), params) for n in (3, 9, 14)]
    dep.step()  # prompts ran (pinned on the prefill actor) and went to the decode actor
    dep.engines["decode-0"].kill()
    for _ in range(50):
        if not dep.has_unfinished():
            break
        dep.step()
    report = dep.failure_report()
    assert report is not None and "\n" not in report and "decode-0" in report
    assert f"requests {', '.join(map(str, ids))} failed" in report
    pool = dep.engines["prefill-0"].pool()
    assert pool["free"] == pool["total"] and pool["pinned"] == 0


def test_ray_trace_has_a_process_per_engine_and_transfers_between_the_steps(ray_session, tmp_path):
    import json

    from test_pd_disaggregation import check_transfers_between_steps

    from kvscope.cli.main import main
    from support.trace_checks import check_chrome_trace

    recipe = tmp_path / "pd-ray.yaml"
    recipe.write_text(json.dumps({
        "model": {"source": "random", "shape": "tiny", "seed": 3}, "attention_backend": "torch",
        "cache": {"block_size": 4, "num_blocks": 64}, "deployment": {"mode": "disaggregated", "transport": "ray"},
        "workload": {"synthetic": {"num_requests": 6, "prompt_len": {"min": 2, "max": 20},
                                   "output_len": {"min": 3, "max": 8}}}}))
    assert main(["trace", str(recipe), "-o", str(tmp_path / "out")]) == 0
    trace = json.loads((tmp_path / "out" / "trace.json").read_text())
    check_chrome_trace(trace)
    assert check_transfers_between_steps(trace) == 6
    offsets = trace["otherData"]["clock_offsets"]
    assert set(offsets) == {"prefill-0", "decode-0"} and all(o["rtt_ns"] > 0 for o in offsets.values())


def test_serve_over_ray_streams_the_decode_side_and_refuses_attach(ray_session):
    import httpx
    import openai

    from kvscope.engine.llm import LLM, as_recipe
    from kvscope.serve.server.api_server import ServerThread

    base = {"model": {"source": "random", "shape": "tiny", "seed": 0}, "attention_backend": "torch",
            "cache": {"block_size": 4, "num_blocks": 64}, "scheduler": {"max_model_len": 128}}
    want = LLM(as_recipe(base)).generate(["hello there"], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    recipe = as_recipe(dict(base, deployment={"mode": "disaggregated", "transport": "ray"}))
    with ServerThread(recipe) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        chunks = list(client.completions.create(model="tiny", prompt="hello there", max_tokens=10, stream=True,
                                                extra_body={"ignore_eos": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
        answer = httpx.get(srv.url + "/kvscope/v1/snapshot")
        assert answer.status_code == 501 and "Ray actors" in answer.json()["error"]["message"]
