"""`--api-key`: only the key holder uses or steers the server; /health, /version and /metrics stay open, as in
vLLM; the attach client, `kvscope trace --attach` and `kvscope bench serve` send the key.

Oracles: vLLM's 401 (status 401, body exactly {"error": "Unauthorized"}); the official openai client; the
engine loop's own pause flag and request count for what a refused request did not do.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from starlette.datastructures import Headers

from kvscope.cli.main import main
from kvscope.engine.llm import as_recipe
from kvscope.serve.client.attach_client import RemoteController
from kvscope.serve.server.api_server import ServeOptions, ServerThread
from kvscope.serve.server.auth import ApiKeyMiddleware, exposure_warning, is_loopback, resolve_api_keys
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 64, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 128, "max_model_len": 128}}
KEYS = ("sk-first", "sk-second")
GUARDED = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
           ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
           ("POST", "/tokenize", {"prompt": "hi"}), ("POST", "/detokenize", {"tokens": [104, 105]}),
           ("GET", "/kvscope/v1/snapshot", None), ("POST", "/kvscope/v1/control", {"action": "pause"}),
           ("GET", "/kvscope/v1/events", None), ("GET", "/no/such/path", None)]


@pytest.fixture(scope="module")
def server():
    with ServerThread(as_recipe(RECIPE), ServeOptions(port=0, api_keys=KEYS)) as srv:
        yield srv


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path", "body"), GUARDED, ids=[p for _, p, _ in GUARDED])
def test_every_guarded_path_is_vllms_401_without_the_key(server, method, path, body):
    steps = server.state.engine.steps_run
    for headers in ({}, bearer("sk-wrong"), {"Authorization": "Bearer"}, {"Authorization": "Basic sk-first"},
                    {"Authorization": "sk-first"}, bearer("sk-first2"), bearer("sk-firs")):
        r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}, (path, headers)
    assert not server.state.engine.paused and server.state.engine.steps_run == steps  # nothing reached the engine


def test_the_key_opens_them_any_key_and_any_case_of_bearer(server):
    for key, scheme in (("sk-first", "Bearer"), ("sk-second", "bearer"), ("sk-first", "BEARER")):
        headers = {"Authorization": f"{scheme} {key}"}
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=headers)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        assert httpx.post(server.url + "/tokenize", json={"prompt": "hi"}, headers=headers).json()["count"] == 3
        assert httpx.get(server.url + "/kvscope/v1/snapshot", headers=headers).status_code == 200
    with httpx.stream("GET", server.url + "/kvscope/v1/events", headers=bearer("sk-first"), timeout=10) as r:
        assert r.status_code == 200 and next(r.iter_lines()).startswith(": kvscope events after")


def test_health_version_metrics_and_preflights_stay_open(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/version").json()["version"]
    assert "vllm:num_requests_running" in httpx.get(server.url + "/metrics").text
    assert httpx.options(server.url + "/v1/completions").status_code != 401  # CORS preflight: vLLM lets it by


def test_the_openai_client_with_the_key_and_without_it(server):
    good = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-second", max_retries=0, timeout=30)
    assert good.completions.create(model="tiny", prompt="abc", max_tokens=3).usage.completion_tokens == 3
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_only_the_key_holder_steers_the_engine(server):
    loop = server.state.engine
    r = httpx.post(server.url + "/kvscope/v1/control", json={"action": "pause"}, headers=bearer("sk-wrong"))
    assert r.status_code == 401 and not loop.paused
    ctl = RemoteController(server.url, api_key="sk-first").start()
    try:
        assert wait_until(lambda: ctl.session is not None, 10)
        ctl.pause()
        assert wait_until(lambda: loop.paused, 5)
        ctl.resume()
        assert wait_until(lambda: not loop.paused, 5)
    finally:
        ctl.stop()
    keyless = RemoteController(server.url, retries=0).start()
    assert wait_until(lambda: keyless.error is not None, 10) and keyless.session is None
    keyless.stop()


def test_trace_attach_and_bench_serve_send_the_key(server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["trace", "--attach", server.url, "--seconds", "0.5", "-o", str(tmp_path / "t"),
                 "--api-key", "sk-first"]) == 0
    assert (tmp_path / "t" / "events.jsonl").stat().st_size > 0
    assert main(["trace", "--attach", server.url, "--seconds", "0.5", "-o", str(tmp_path / "u")]) == 2
    assert "--api-key" in capsys.readouterr().err
    bench = ["bench", "serve", "--base-url", server.url, "--num-prompts", "4", "--random-input-len", "8",
             "--random-output-len", "3", "--ignore-eos", "--save-result", "--result-dir", str(tmp_path),
             "--result-filename", "r.json"]
    assert main([*bench, "--api-key", "sk-second"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["completed"] == 4 and result["failed"] == 0 and result["input_lens"] == [8] * 4
    monkeypatch.setenv("OPENAI_API_KEY", "sk-first")  # as `vllm bench serve` reads it
    assert main(bench) == 0
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    capsys.readouterr()
    assert main(bench) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--api-key" in err[0] and "refused" in err[0]


def test_attach_without_the_key_is_one_line_naming_the_flag(server, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["attach", server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvscope: error: --api-key:") and "wants an API key" in err[0]


def test_keys_come_from_the_flag_else_vllm_api_key():
    assert resolve_api_keys(["a", "b"], {"VLLM_API_KEY": "env"}) == ("a", "b")
    assert resolve_api_keys(None, {"VLLM_API_KEY": "env"}) == ("env",)
    assert resolve_api_keys([], {"VLLM_API_KEY": ""}) == () == resolve_api_keys(None, {})


def test_the_comparison_looks_at_every_key():
    guard = ApiKeyMiddleware(app=None, keys=["k1", "k2"])  # type: ignore[arg-type]
    assert guard.allows(Headers({"authorization": "Bearer k2"}))
    assert not guard.allows(Headers({"authorization": "Bearer k3"}))
    assert not guard.allows(Headers({}))
    with pytest.raises(ValueError):
        ApiKeyMiddleware(app=None, keys=[])  # type: ignore[arg-type]


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True),
                                                 ("::1", True), ("[::1]", True), ("0.0.0.0", False),
                                                 ("::", False), ("", False), ("192.168.1.5", False),
                                                 ("gpu-box", False)])
def test_binding_beyond_loopback_without_a_key_warns(host, loopback):
    assert is_loopback(host) is loopback
    warning = exposure_warning(host, 8000, ())
    assert (warning is None) is loopback
    if warning is not None:
        assert "\n" not in warning and "--api-key" in warning and "warning" in warning
    assert exposure_warning(host, 8000, ("k",)) is None


def test_serve_prints_the_warning_once_on_stderr(monkeypatch, capsys):
    import uvicorn

    from kvscope.serve.server.api_server import serve_recipe

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # no socket: only what serve says before it
    serve_recipe(as_recipe(RECIPE), ServeOptions(host="0.0.0.0", port=8123))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0.0.0.0:8123 without --api-key" in err[0]
    serve_recipe(as_recipe(RECIPE), ServeOptions(host="0.0.0.0", port=8123, api_keys=("k",)))
    assert capsys.readouterr().err == ""
