"""`kvscope serve` on a disaggregated deployment: the openai client streams what the decode engine generates
(the same greedy tokens as one engine), /metrics has the client's TTFT and the KV transfers, an attached
viewer sees the decode engine, and an aborted stream frees both engines' blocks."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.llm import LLM, as_recipe
from kvscope.serve.server.api_server import ServerThread

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 96, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 256, "max_model_len": 128},
          "sampling": {"temperature": 0.0}, "deployment": {"mode": "disaggregated"}}
PROMPTS = ["hello there", "The capital of France is", "abc", "Once upon a time, in a land far away"]


def samples(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_serve_streams_the_decode_side_with_one_engines_tokens():
    single = dict(RECIPE)
    single.pop("deployment")
    expected = LLM(as_recipe(single)).generate(PROMPTS, SamplingParams(max_tokens=12, ignore_eos=True))
    with ServerThread(as_recipe(RECIPE)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)
        for prompt, want in zip(PROMPTS, expected):
            chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12, stream=True,
                                                    extra_body={"ignore_eos": True, "return_token_ids": True}))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            assert text == want.text
        m = samples(srv.url)
        assert m["vllm:time_to_first_token_seconds_count"] == len(PROMPTS)
        assert m["vllm:generation_tokens_total"] == 12 * len(PROMPTS)
        assert m["kvscope:kv_transfer_bytes_total"] > 0 and m["kvscope:kv_transfer_seconds_count"] == len(PROMPTS)
        snap = httpx.get(srv.url + "/kvscope/v1/snapshot").json()  # the attached view: the decode engine
        assert snap["events"][0]["kind"] == "run_info"

        # a client that leaves mid-stream: both engines end with every block free
        stream = client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=60, stream=True,
                                           extra_body={"ignore_eos": True})
        next(iter(stream))
        stream.close()
        deployment = srv.state.engine.engine
        assert srv.state.engine.wait_idle(10)
        for name in ("prefill-0", "decode-0"):
            bm = deployment.local_engine(name).block_manager
            assert bm.num_free_blocks == bm.num_blocks, name
