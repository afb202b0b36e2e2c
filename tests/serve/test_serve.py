"""`kvscope serve` driven by the official openai client on a free loopback port (tiny random model).

Oracles: the offline engine (LLM.generate) on the same recipe gives the greedy text; the non-streaming
response gives what the concatenated stream must equal; a request run alone gives what it must be
under 16 concurrent streams; the engine's own block manager says whether an aborted request's blocks are
back; /metrics (parsed by prometheus_client) says what was counted.
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM, as_recipe
from kvscope.serve.server.api_server import ServeOptions, ServerThread
from support.scrape import engine_idle, metric, metrics
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 96, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256, "max_model_len": 128},
          "sampling": {"temperature": 0.0}}
PROMPTS = ["hello there", "The capital of France is", "abc", "Once upon a time, in a land far away",
           "1 2 3 4", "kv cache", "zz", "What is 12 times 12?"]


@pytest.fixture(scope="module")
def server():
    with ServerThread(as_recipe(RECIPE)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)


def stream_text(client, **kw) -> tuple[str, list]:
    chunks = list(client.completions.create(stream=True, **kw))
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


def test_completion_equals_offline_engine_and_stream_equals_completion(server, client):
    offline = LLM(as_recipe(RECIPE)).generate(PROMPTS, SamplingParams(max_tokens=12))
    for prompt, want in zip(PROMPTS, offline):
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
        assert out.choices[0].text == want.text
        assert out.choices[0].finish_reason == want.finish_reason
        assert out.usage.prompt_tokens == len(want.prompt_token_ids)
        assert out.usage.completion_tokens == len(want.token_ids)
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
        text, chunks = stream_text(client, model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                   stream_options={"include_usage": True})
        assert text == want.text
        assert chunks[0].choices, "the first chunk carries the first token"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason


def test_token_id_prompt_and_raw_sse_framing(server, client):
    ids = client.completions.create(model="tiny", prompt="abc", max_tokens=1).usage.prompt_tokens
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": "abc"}).json()
    assert tokens["count"] == ids and tokens["max_model_len"] == 128
    assert httpx.post(server.url + "/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"] == "abc"
    by_text = client.completions.create(model="tiny", prompt="abc", max_tokens=6)
    by_ids = client.completions.create(model="tiny", prompt=tokens["tokens"], max_tokens=6)
    assert by_ids.choices[0].text == by_text.choices[0].text
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={"prompt": "abc", "max_tokens": 4, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        records = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in records)
    assert records[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in records[:-1])


def test_chat_stream_equals_chat_and_first_chunk_has_role_and_content(client):
    messages = [{"role": "user", "content": "Name three primary colors."}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=10)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}))
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[0].choices[0].delta.content is not None
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 10
    assert full.choices[0].finish_reason == "length"


def test_stop_string_is_cut_the_same_streaming_or_not(client):
    prompt = "Once upon a time, in a land far away"
    base = client.completions.create(model="tiny", prompt=prompt, max_tokens=24).choices[0].text
    stop = next(base[i:i + 2] for i in range(3, len(base) - 2) if base[i:i + 2].strip() and "\ufffd" not in
                base[i:i + 2])
    want = base[:base.find(stop)]
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, stop=[stop])
    assert out.choices[0].text == want and out.choices[0].finish_reason == "stop"
    text, _ = stream_text(client, model="tiny", prompt=prompt, max_tokens=24, stop=stop)
    assert text == want


def test_sixteen_concurrent_streams_each_equal_their_request_alone(server, client):
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(16)]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=16).choices[0].text for p in prompts]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = stream_text(client, model="tiny", prompt=prompts[i], max_tokens=16)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results.get(i) for i in range(16)] == alone
    assert wait_until(lambda: engine_idle(server), 10.0)


BAD = [
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "x" * 200, "max_tokens": 4}, 400, "prompt"),        # longer than max_model_len 128
    ({"prompt": "hello", "max_tokens": 200}, 400, "max_tokens"),     # beyond what the context leaves
    ({"prompt": "hello", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "hello", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "hello", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hello", "n": 2}, 400, "n"),
    ({"prompt": "hello", "logprobs": 2}, 400, "logprobs"),
    ({"prompt": "hello", "best_of": 3}, 400, "best_of"),
    ({"prompt": "hello", "echo": True}, 400, "echo"),
    ({"prompt": "hello", "suffix": "x"}, 400, "suffix"),
    ({"prompt": [1, 2, 99999]}, 400, "prompt"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "hello", "model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD)
def test_bad_input_gets_status_and_vllm_error_shape(server, body, status, field):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    assert field in err["message"] or err["param"] == field
    assert httpx.get(server.url + "/health").status_code == 200


def test_malformed_json_wrong_types_and_pool_too_small_are_400_and_server_keeps_serving(server, client):
    for raw in (b"{not json", b"[1, 2]"):
        r = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": "hi"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                              "logprobs": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):  # a field of the wrong type
        client.completions.create(model="tiny", prompt="y", max_tokens=7, extra_body={"ignore_eos": "x"})
    assert client.completions.create(model="tiny", prompt="still here", max_tokens=2).usage.completion_tokens == 2


def test_request_that_can_never_fit_the_pool_is_400():
    small = dict(RECIPE, cache={"block_size": 4, "num_blocks": 8})
    with ServerThread(as_recipe(small)) as srv:
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x" * 40, "max_tokens": 8})
        assert r.status_code == 400 and "KV blocks" in r.json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 4})
        assert r.status_code == 200


def test_models_health_version(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/version").json()["version"]


def test_stream_closed_after_two_tokens_and_queued_request_closed_are_aborted(server, client):
    loop = server.state.engine
    before = metric(metrics(server.url), "vllm:request_success_total", finished_reason="abort")
    loop.set_delay(0.05)  # slow steps: the client leaves mid-stream
    try:
        stream = client.completions.create(model="tiny", prompt="a long story", max_tokens=100, stream=True,
                                           extra_body={"ignore_eos": True})
        got = []
        for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                break
        stream.close()
        assert wait_until(lambda: engine_idle(server), 10.0), "the abandoned stream's request is aborted, blocks freed"
    finally:
        loop.set_delay(0)
    loop.pause()  # nothing runs: a new request stays queued
    try:
        def leave_while_queued() -> None:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server.url + "/v1/completions", json={"prompt": "queued", "max_tokens": 8},
                           timeout=0.5)

        leave_while_queued()
        assert wait_until(lambda: not loop.engine.has_unfinished() and loop.num_open == 0, 10.0)
    finally:
        loop.resume()
    assert wait_until(lambda: engine_idle(server), 10.0)
    engine = loop.engine
    assert engine.block_manager.num_free_blocks == engine.num_blocks
    after = metric(metrics(server.url), "vllm:request_success_total", finished_reason="abort")
    assert after - before == 2


def test_full_queue_is_503_with_retry_after():
    with ServerThread(as_recipe(RECIPE), ServeOptions(port=0, max_waiting=1)) as srv:
        srv.state.engine.pause()
        first = threading.Thread(target=lambda: httpx.post(srv.url + "/v1/completions",
                                                           json={"prompt": "a", "max_tokens": 2}, timeout=10))
        first.start()
        assert wait_until(lambda: srv.state.engine.num_waiting == 1, 10.0)
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "b", "max_tokens": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == 503
        srv.state.engine.resume()
        first.join(10)
        assert httpx.post(srv.url + "/v1/completions", json={"prompt": "b", "max_tokens": 2}).status_code == 200


def test_engine_death_is_error_chunk_then_done_and_health_503():
    with ServerThread(as_recipe(RECIPE)) as srv:
        engine = srv.state.engine.engine

        def broken_step():
            raise RuntimeError("device lost")

        engine.step = broken_step
        with httpx.stream("POST", srv.url + "/v1/completions",
                          json={"prompt": "a", "max_tokens": 4, "stream": True}) as r:
            records = [line for line in r.iter_lines() if line]
        assert "device lost" in json.loads(records[0][6:])["error"]["message"]
        assert records[-1] == "data: [DONE]"
        assert httpx.get(srv.url + "/health").status_code == 503
        assert httpx.post(srv.url + "/v1/completions", json={"prompt": "a"}).status_code == 503


def test_metrics_parse_carry_vllm_names_and_move_with_traffic(server, client):
    before = metrics(server.url)
    out = client.completions.create(model="tiny", prompt="count me", max_tokens=5, extra_body={"ignore_eos": True})
    assert wait_until(lambda: engine_idle(server), 10.0)
    after = metrics(server.url)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket", "vllm:iteration_tokens_total_bucket",
                 "kvscope:kv_cached_free_blocks", "kvscope:kv_internal_fragmentation", "kvscope:kv_contiguous_waste"):
        assert any(n == name and ("model_name", "tiny") in ls and ("engine", "0") in ls for n, ls in after), name

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == out.usage.prompt_tokens
    assert delta("vllm:generation_tokens_total") == 5
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert delta("vllm:e2e_request_latency_seconds_count") == 1
    assert delta("vllm:inter_token_latency_seconds_count") == 4
    assert delta("vllm:prefix_cache_queries_total") == out.usage.prompt_tokens
    assert metric(after, "vllm:num_requests_running") == 0 and metric(after, "vllm:kv_cache_usage_perc") == 0
    assert ("vllm:time_to_first_token_seconds_bucket", (("engine", "0"), ("le", "0.001"), ("model_name", "tiny"))) \
        in after
    # the same prompt again: its full blocks come from the prefix cache
    client.completions.create(model="tiny", prompt="count me", max_tokens=5)
    again = metrics(server.url)
    assert metric(again, "vllm:prefix_cache_hits_total") > metric(after, "vllm:prefix_cache_hits_total")


@pytest.mark.slow
def test_smollm2_chat_through_the_server_equals_offline_chat_with_its_template():
    recipe = as_recipe({"model": {"source": "gguf", "path": "smollm2"}, "cache": {"block_size": 16, "num_blocks": 64},
                        "scheduler": {"max_model_len": 512}, "sampling": {"temperature": 0.0}})
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    llm = LLM(recipe)
    want = llm.generate([messages], SamplingParams(max_tokens=24))[0]
    with ServerThread(recipe, loaded=llm.engine.loaded) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        full = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24)
        chunks = list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24,
                                                     stream=True))
    assert full.choices[0].message.content == want.text
    assert "Paris" in want.text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert full.usage.prompt_tokens == len(want.prompt_token_ids)


def test_speculative_server_streams_the_plain_greedy_text_and_counts_vllms_spec_metrics():
    spec = dict(RECIPE, speculative={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
                                     "prompt_lookup_max": 3})
    prompts = ["abcabcabcabc", "hello hello hello hello", "zzzzzzzz"]
    plain = LLM(as_recipe(RECIPE)).generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True))
    with ServerThread(as_recipe(spec)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)
        for prompt, want in zip(prompts, plain):
            text, chunks = stream_text(client, model="tiny", prompt=prompt, max_tokens=24,
                                       extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
            assert text == want.text and chunks[-1].usage.completion_tokens == 24
        m = metrics(srv.url)
    drafts = metric(m, "vllm:spec_decode_num_drafts_total")
    drafted = metric(m, "vllm:spec_decode_num_draft_tokens_total")
    accepted = metric(m, "vllm:spec_decode_num_accepted_tokens_total")
    assert drafts > 0 and 0 < accepted <= drafted <= 3 * drafts
    assert metric(m, "vllm:spec_decode_num_accepted_tokens_per_pos_total") == accepted
    assert metric(m, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position="0") >= \
        metric(m, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position="1")
