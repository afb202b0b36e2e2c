"""The engine's live ranges (what NVTX shows under nsys): balanced, nested, named like the events."""

from kvscope.config.recipe import Recipe
from kvscope.engine.session import RunSession
from kvscope.events.bus import EventBus, EventList


class RecordingHook:
    def __init__(self) -> None:
        self.stack: list[str] = []
        self.closed: list[tuple[str, str, tuple[str, ...]]] = []  # (name, category, parents)
        self.categories: list[str] = []

    def push(self, name: str, category: str, payload: int = 0) -> None:
        self.categories.append(category)
        self.stack.append(name)
        self.closed.append((name, category, tuple(self.stack[:-1])))

    def pop(self) -> None:
        self.stack.pop()


def test_ranges_are_balanced_and_nested_like_the_trace():
    from kvscope.engine.probe.op_timer import PROGRAM_BACKEND

    hook = RecordingHook()
    bus = EventBus()
    events = bus.subscribe(EventList())
    recipe = Recipe.from_dict({"model": {"source": "random", "shape": "tiny", "seed": 0},
                               "cache": {"block_size": 4, "num_blocks": 64},
                               "sampling": {"max_tokens": 3, "ignore_eos": True},
                               "workload": {"prompts": ["abc", "defgh"]}})
    session = RunSession(recipe, bus=bus, range_hook=hook)
    session.run()
    assert hook.stack == []  # every push popped
    steps = [c for c in hook.closed if c[0] == "step"]
    assert len(steps) == session.steps and all(parents == () for _, _, parents in steps)
    phases = {n for n, cat, parents in hook.closed if cat == "phase"}
    assert phases == {"schedule", "prepare", "forward", "sample"}
    kernels = [(n, parents) for n, cat, parents in hook.closed if cat == "kernel"]
    kernel_events = [e for e in events.events if e.kind == "kernel"]
    # the same names in the same order; a CPU decode program's ops (measured inside one C call) are one range
    names = []
    for e in kernel_events:
        if e.backend != PROGRAM_BACKEND:
            names.append(e.op)
        elif not names or names[-1] != "decode_program":
            names.append("decode_program")
    assert "decode_program" in names and [n for n, _ in kernels] == names
    assert all(parents[-1] in ("forward", "sample") and parents[0] == "step" for _, parents in kernels)


def test_no_hook_and_no_subscriber_times_no_op(monkeypatch):
    from kvscope.engine.probe.op_timer import OpTimer

    made = []
    real = OpTimer.attach
    monkeypatch.setattr(OpTimer, "attach", lambda self, *a, **k: made.append(1) or real(self, *a, **k))
    recipe = Recipe.from_dict({"model": {"source": "random", "shape": "tiny", "seed": 0},
                               "cache": {"block_size": 4, "num_blocks": 64},
                               "sampling": {"max_tokens": 2, "ignore_eos": True}, "workload": {"prompts": ["ab"]}})
    RunSession(recipe).run()
    assert made == []


def test_an_engine_that_times_nothing_leaves_no_timer_on_a_shared_model():
    """Engines may share a loaded model (bench, benchmarks): a timed run's wrappers must not stay on it and keep
    recording (into a dead timer) under the next, untimed engine; a timed engine puts its own on."""
    from kvscope.engine.llm_engine import LLMEngine
    from kvscope.engine.model.loader import load_for_recipe

    recipe = Recipe.from_dict({"model": {"source": "random", "shape": "tiny", "seed": 0},
                               "cache": {"block_size": 4, "num_blocks": 64},
                               "sampling": {"max_tokens": 2, "ignore_eos": True}, "workload": {"prompts": ["ab"]}})
    loaded = load_for_recipe(recipe)
    timed_bus = EventBus()
    events = timed_bus.subscribe(EventList())
    first = RunSession(recipe, bus=timed_bus, loaded=loaded)
    first.run()
    first_timer = first.engine.probe.timer
    assert any(e.kind == "kernel" for e in events.events) and first_timer.attached_to(loaded.model)
    untimed = LLMEngine(recipe, loaded=loaded)
    untimed.add_request("abc")
    while untimed.has_unfinished():
        untimed.step()
    assert not first_timer.attached_to(loaded.model)
    assert "forward" not in loaded.model.embed.__dict__ and "forward" not in loaded.model.layers[0].__dict__
    second_bus = EventBus()
    again = second_bus.subscribe(EventList())
    RunSession(recipe, bus=second_bus, loaded=loaded).run()
    assert [e.op for e in again.events if e.kind == "kernel"][:2] == ["embed", "attn_norm"]
