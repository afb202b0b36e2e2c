"""Attach: the TUI's model built from a server's SSE stream equals the engine's own state, for a viewer
attached from the start (events only) and for a late joiner (snapshot, then events).

Oracles: the engine's block manager and requests (block tables, free and cached pools, ref counts), the
server's own Prometheus counters and the clients' usage for the folded metrics; the ring's bounds for the
gap record.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import httpx
import pytest

from kvscope.engine.core.request import RequestStatus
from kvscope.engine.llm import as_recipe
from kvscope.events.records import RunInfo
from kvscope.serve.client.attach_client import RemoteController, sse_records
from kvscope.serve.server.api_server import ServeOptions, ServerThread
from kvscope.serve.server.event_hub import EventHub
from kvscope.tui.model import UIModel
from support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 40, "prefix_caching": True},
          "scheduler": {"max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 128}}
SHARED = "a shared system prompt of some length, "


def caught_up(ctl: RemoteController, srv: ServerThread) -> bool:
    return ctl.session is not None and ctl._stream.last_id >= srv.state.hub.last_id


def assert_same_state(model: UIModel, srv: ServerThread) -> None:
    engine = srv.state.engine.engine
    view = model.view
    with engine._lock:
        tables = engine.block_tables()
        bm = engine.block_manager
        assert view.tables == tables
        assert view.free_blocks() == bm.free_block_ids()
        assert view.cached_blocks() == bm.cached_block_ids()
        assert view.block_refs == bm.ref_counts
        live = {rid for rid, r in engine.requests.items() if r.status is not RequestStatus.FINISHED}
        assert {rid for rid, r in view.requests.items() if r.status != "finished"} == live
        running = {r.request_id for r in engine.scheduler.running}
        assert {r.request_id for r in view.running()} == running


def send(url: str, n: int, results: list) -> list[threading.Thread]:
    def one(i: int) -> None:
        r = httpx.post(url + "/v1/completions", json={"prompt": SHARED + f"question {i}", "max_tokens": 10 + i % 7,
                                                      "ignore_eos": True}, timeout=60)
        results.append(r.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_state_rebuilt_from_the_stream_equals_the_engines_mid_run_and_at_the_end():
    with ServerThread(as_recipe(RECIPE)) as srv:
        early = RemoteController(srv.url).start()
        assert wait_until(lambda: early.session is not None)
        model = UIModel()
        results: list[int] = []
        loop = srv.state.engine
        loop.set_delay(0.02)
        threads = send(srv.url, 12, results)
        assert wait_until(lambda: srv.state.engine.engine.block_manager.num_used_blocks > 8)
        early.pause()  # through POST /kvscope/v1/control
        assert loop.paused and early.paused
        with srv.state.engine.engine._lock:  # a step in flight when the pause landed has ended (and published)
            pass
        assert wait_until(lambda: caught_up(early, srv))
        early.drain(model)
        assert_same_state(model, srv)
        late = RemoteController(srv.url).start()  # a late joiner: snapshot, then the stream
        assert wait_until(lambda: caught_up(late, srv))
        late_model = UIModel()
        late.drain(late_model)
        assert_same_state(late_model, srv)
        assert replace(late_model.view.last_kv, step=0) == replace(model.view.last_kv, step=0)
        steps = loop.steps_run
        assert early.step_once()
        assert wait_until(lambda: loop.steps_run > steps and caught_up(early, srv) and caught_up(late, srv))
        early.drain(model)
        late.drain(late_model)
        assert_same_state(model, srv)
        assert_same_state(late_model, srv)
        early.set_delay(0)
        early.resume()
        for t in threads:
            t.join(60)
        assert wait_until(lambda: not srv.state.engine.engine.has_unfinished() and caught_up(early, srv))
        early.drain(model)
        assert_same_state(model, srv)
        summary = model.metrics.summary()
        assert summary.finished == 12 and summary.generated_tokens == sum(results)
        assert summary.preemptions == pytest.approx(srv.state.metrics.preemptions._value.get())
        assert summary.prefix_hit_tokens == srv.state.metrics.prefix_hits._value.get() > 0
        early.stop()
        late.stop()
        assert early.error is None and late.error is None


def test_a_reader_behind_the_ring_gets_a_gap_and_recovers_from_the_snapshot():
    hub = EventHub(capacity=4)
    info = RunInfo(0, -1, "m", 1, 1, 1, 1, 1, "float32", "cpu", "torch", "continuous", 8, 4, 64, 16, 4, 64)
    for _ in range(10):
        hub(info)
    assert hub.read_after(0).gap and hub.read_after(0).first_kept == 7
    batch = hub.read_after(6)
    assert not batch.gap and [i for i, _ in batch.events] == [7, 8, 9, 10]
    with ServerThread(as_recipe(RECIPE), ServeOptions(port=0, event_buffer=8)) as srv:
        httpx.post(srv.url + "/v1/completions", json={"prompt": "make events", "max_tokens": 8})
        assert srv.state.hub.last_id > 8
        with httpx.stream("GET", srv.url + "/kvscope/v1/events", headers={"Last-Event-ID": "0"}) as r:
            records = list(sse_records(r.iter_lines()))
        assert [name for _, name, _ in records if name != "message"] == ["gap"]
        ctl = RemoteController(srv.url)
        ctl._stream.last_id = 0  # as if it had read event 0 long ago: follow() meets the gap, re-reads the snapshot
        model = UIModel()
        stop = threading.Event()

        def follow() -> None:
            try:
                ctl._stream.follow(stop.is_set)
            except httpx.HTTPError:  # closed under it below
                pass

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert wait_until(lambda: ctl._stream.gaps == 1 and ctl._stream.last_id == srv.state.hub.last_id)
        stop.set()
        ctl.drain(model)
        assert_same_state(model, srv)
        ctl._stream.close()
        follower.join(10)


def test_control_errors_are_400():
    with ServerThread(as_recipe(RECIPE)) as srv:
        for body in ({"action": "fly"}, {"action": "step"}, {"action": "delay", "seconds": -1}):
            r = httpx.post(srv.url + "/kvscope/v1/control", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == 400
        r = httpx.get(srv.url + "/kvscope/v1/events", headers={"Last-Event-ID": "x"})
        assert r.status_code == 400


def test_trace_attach_records_a_live_servers_timeline(tmp_path, capsys):
    import json

    from kvscope.cli.main import main
    from kvscope.inspector.export.recording import read_recording

    with ServerThread(as_recipe(RECIPE)) as srv:
        srv.state.engine.set_delay(0.01)
        results: list[int] = []
        threads = send(srv.url, 4, results)
        code = main(["trace", "--attach", srv.url, "--seconds", "1.5", "-o", str(tmp_path)])
        for t in threads:
            t.join(60)
    assert code == 0, capsys.readouterr()
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert len(trace["traceEvents"]) > 10
    assert (tmp_path / "trace.nvtxt").stat().st_size > 0
    events = read_recording(tmp_path / "events.jsonl").events  # strict: in order, every event valid
    assert events[0].kind == "run_info" and any(e.kind == "step_end" for e in events)
    assert main(["trace"]) == 2 and main(["trace", "--attach", "http://127.0.0.1:1", "-o", str(tmp_path)]) == 2


def test_attach_tui_shows_the_server_and_its_keys_steer_it():
    import asyncio

    from kvscope.tui.app import KVScopeApp

    with ServerThread(as_recipe(RECIPE)) as srv:
        loop = srv.state.engine
        loop.set_delay(0.02)
        app = KVScopeApp(controller=RemoteController(srv.url), title="attached", deterministic=True)
        results: list[int] = []

        async def drive() -> None:
            async with app.run_test(size=(160, 50)) as pilot:
                threads = send(srv.url, 6, results)
                for _ in range(100):
                    await pilot.pause(0.05)
                    if app.model.view.tables:
                        break
                assert app.model.view.info is not None and app.model.view.tables
                await pilot.press("space")
                assert wait_until(lambda: loop.paused, 5)
                await pilot.press("space")
                assert wait_until(lambda: not loop.paused, 5)
                await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join(60) for t in threads])

        asyncio.run(drive())
        assert len(results) == 6


def test_text_events_give_an_attached_tui_the_prompt_and_the_answer():
    from kvscope.cli.commands.serve import attach_text_events

    with ServerThread(as_recipe(RECIPE), ServeOptions(port=0, on_engine=attach_text_events)) as srv:
        ctl = RemoteController(srv.url).start()
        assert wait_until(lambda: ctl.session is not None)
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hello text", "max_tokens": 8}).json()
        assert wait_until(lambda: caught_up(ctl, srv))
        model = UIModel()
        ctl.drain(model)
        ctl.stop()
    rid = max(model.view.requests)
    assert model.text.prompt(rid).endswith("hello text")
    assert model.text.output(rid).replace("\ufffd", "").startswith(r["choices"][0]["text"].replace("\ufffd", "")[:4])
