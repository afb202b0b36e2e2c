"""The run-control seams (kvscope.inspector.live.controller): RunController is what the TUI holds, RunControls
the steering part of it. The in-process SessionController and the attach client's RemoteController are
RunControllers; the server's EngineLoop has the controls (its events go to the attach stream, not a queue)."""

from __future__ import annotations

import pytest

from kvscope.engine.llm import as_recipe
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus
from kvscope.inspector.live.controller import (
    FAILED,
    FINISHED,
    PAUSED,
    RUNNING,
    STOPPED,
    RunController,
    RunControls,
    SessionController,
)
from kvscope.serve.client.attach_client import RemoteController
from kvscope.serve.server.engine_loop import EngineLoop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"model": {"source": "random", "shape": "tiny", "seed": 0},
          "cache": {"block_size": 4, "num_blocks": 40},
          "scheduler": {"max_num_seqs": 4, "max_num_batched_tokens": 64, "max_model_len": 128},
          "sampling": {"max_tokens": 4, "ignore_eos": True},
          "workload": {"prompts": ["one", "two"]}}


def session_controller(start_paused: bool = False) -> SessionController:
    return SessionController(lambda bus: RunSession(as_recipe(RECIPE), bus=bus), start_paused=start_paused)


def typed_controllers(engine: LLMEngine) -> tuple[RunController, RunController, RunControls]:
    """The same three as a type checker sees them: an assignment that fails to check if a class falls short."""
    local: RunController = session_controller()
    remote: RunController = RemoteController("http://127.0.0.1:9")
    server: RunControls = EngineLoop(engine)
    return local, remote, server


def test_each_controller_satisfies_its_protocol():
    local, remote, server = typed_controllers(LLMEngine(as_recipe(RECIPE)))
    for controller in (local, remote):
        assert isinstance(controller, RunController) and isinstance(controller, RunControls)
    assert isinstance(server, RunControls)
    assert not isinstance(server, RunController)  # no event queue of its own: attach reads the server's stream


def test_an_object_short_of_a_control_is_no_run_controller():
    class Viewer:
        delay_s = 0.0
        error = None
        paused = finished = False
        state = RUNNING
        session = None

        def drain(self, sink, limit=None):
            return 0

    assert not isinstance(Viewer(), RunControls)
    assert not isinstance(Viewer(), RunController)


def test_session_controller_states_through_its_controls():
    ctl = session_controller(start_paused=True).start()
    try:
        assert ctl.wait_idle(30) and ctl.state == PAUSED
        assert ctl.toggle_pause() is False
        assert ctl.wait_idle(30) and ctl.state == FINISHED and ctl.finished
        assert ctl.drain(lambda event: None) > 0
    finally:
        ctl.stop()
    assert ctl.state == STOPPED


def test_engine_loop_states_through_its_controls():
    engine = LLMEngine(as_recipe(RECIPE), bus=EventBus())
    loop = EngineLoop(engine).start()
    try:
        assert loop.state == RUNNING and not loop.finished
        assert loop.toggle_pause() is True and loop.paused and loop.state == PAUSED
        assert loop.step_once()
        assert loop.toggle_pause() is False and loop.state == RUNNING
        assert loop.step_once() is False  # only while paused
        loop.restart()  # a server's workload comes from its clients: nothing changes
        assert loop.state == RUNNING and loop.alive
    finally:
        loop.stop()
    assert loop.state == STOPPED
    loop.error = RuntimeError("gone")
    assert loop.state == FAILED
