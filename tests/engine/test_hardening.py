"""No request can wedge the engine, no bad input escapes as a traceback, nothing is aborted in silence.

One test (or parametrised family) per class of failure found by trying the engine as a demanding user
would: bad sampling parameters and prompts, wrong types through the API, requests that could never be
scheduled with chunked prefill off, preempted requests resumed in chunks, a request poisoned after
admission, recordings cut or spliced, and the step API fed from another thread.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvscope.config.recipe import Recipe
from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.core.request import RequestStatus
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import load_for_recipe
from kvscope.engine.session import RunSession
from kvscope.errors import RecipeError, RequestError
from kvscope.events.bus import EventBus, EventList
from kvscope.inspector.export.recording import JsonlRecorder, RecordingError, make_header, read_recording
from kvscope.inspector.export.replay import load_timeline
from support.cli import KVSCOPE, one_line_error

TINY = {"model": {"source": "random", "shape": "tiny", "seed": 0}, "cache": {"block_size": 4, "num_blocks": 64}}


@pytest.fixture(scope="module")
def loaded():
    return load_for_recipe(Recipe.from_dict(dict(TINY, workload={"prompts": ["-"]})))


def engine(loaded, bus: EventBus | None = None, **sections) -> LLMEngine:
    data = dict(TINY, workload={"prompts": ["-"]})
    data.update(sections)
    return LLMEngine(Recipe.from_dict(data), loaded=loaded, bus=bus)


def drain(e: LLMEngine) -> dict:
    outs = {}
    for _ in range(10_000):
        if not e.has_unfinished():
            return outs
        for o in e.step():
            outs[o.request_id] = o
    raise AssertionError("the engine did not finish")


def pool_is_whole(e: LLMEngine) -> bool:
    bm = e.block_manager
    return bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


# ------------------------------------------------------------------------ 1. bad sampling parameters


@pytest.mark.parametrize("field,value", [
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -1.0), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", -1.0), ("top_p", float("nan")), ("top_p", 1.5),
    ("top_k", -1), ("top_k", 1.5),
    ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", None), ("max_tokens", True),
    ("seed", 2**64), ("seed", -1), ("seed", "x"),
    ("stop", [""]), ("stop", [3]), ("stop_token_ids", ["a"]), ("ignore_eos", "yes"),
])
def test_bad_sampling_params_are_refused_naming_the_field(loaded, field, value):
    with pytest.raises(RequestError, match=rf"sampling\.{field}: must be"):
        SamplingParams(**{field: value})
    e = engine(loaded)
    params = SamplingParams()
    setattr(params, field, value)  # set after construction: admission checks again
    with pytest.raises(RequestError, match=rf"sampling\.{field}: must be"):
        e.add_request("hello", params)
    assert e.requests == {} and not e.has_unfinished()
    assert e.add_request("hello") == 0  # a refused request takes no id


def test_a_stop_string_given_as_is_is_one_stop_string(loaded):
    assert SamplingParams(stop="ab").stop == ["ab"]
    e = engine(loaded)
    rid = e.add_request("hello", SamplingParams(stop="zzz-never", max_tokens=6, ignore_eos=True))
    assert drain(e)[rid].finish_reason == "length"  # not stopped by 'z' alone, as a set of characters would


@pytest.mark.parametrize("field,value", [("temperature", ".nan"), ("top_p", ".nan"), ("temperature", ".inf")])
def test_recipe_rejects_non_finite_sampling(field, value):
    import yaml

    data = yaml.safe_load(f"sampling: {{{field}: {value}}}\nworkload: {{prompts: [a]}}\n")
    with pytest.raises(RecipeError, match=rf"sampling\.{field}: must be a finite number"):
        Recipe.from_dict(data, source="r.yaml")


# ------------------------------------------------------------------------ 2. wrong types through the API


@pytest.mark.parametrize("prompt,needle", [
    (None, r"prompt: expected text"), (b"abc", r"prompt: expected text.*bytes"), (3.5, r"prompt: expected text"),
    (torch.tensor([1, 2, 3]), r"prompt: expected text.*Tensor"), ([1, "a"], r"prompt\[1\]: token id 'a'"),
    ([1, 2.0], r"prompt\[1\]: token id 2.0 is not an integer"), ([True, 2], r"prompt\[0\]: token id True"),
    ([1, 10**6], r"prompt\[1\]: token id 1000000 outside the vocabulary"),
    ([{"role": "user"}], r"messages\[0\]\.content"),
])
def test_bad_prompts_are_refused_and_leave_no_trace(loaded, prompt, needle):
    bus = EventBus()
    events = bus.subscribe(EventList())
    e = engine(loaded, bus)
    with pytest.raises(RequestError, match=needle):
        e.add_request(prompt)
    assert e.requests == {} and events.events == [] and e.next_request_id == 0


def test_params_of_the_wrong_type_are_refused(loaded):
    e = engine(loaded)
    with pytest.raises(RequestError, match="params: expected SamplingParams, got dict"):
        e.add_request("hello", {"max_tokens": 3})  # type: ignore[arg-type]
    assert e.requests == {}


# ------------------------------------------------------------------------ 3. nothing aborted in silence

CHUNKLESS = {"cache": {"block_size": 16, "num_blocks": 12},
             "scheduler": {"max_num_batched_tokens": 64, "chunked_prefill": False, "max_model_len": 256}}


def test_a_prompt_over_the_budget_without_chunking_is_refused_at_admission(loaded):
    e = engine(loaded, **CHUNKLESS)
    with pytest.raises(RequestError, match=r"more than a step's token budget \(max_num_batched_tokens 64\)"):
        e.add_request(list(range(100, 165)))
    assert e.requests == {}
    e.add_request(list(range(100, 164)))  # exactly the budget: fine


def test_preempted_requests_resume_in_chunks_without_chunked_prefill(loaded):
    """The issue's reproducer: two 60-token prompts asking for 60 tokens each, 12 blocks of 16, a 64-token budget.
    One is preempted; its prompt + output (over 64 tokens) is recomputed in chunks, and both finish."""
    recipe = Recipe.from_dict(dict(TINY, **CHUNKLESS, workload={
        "synthetic": {"num_requests": 2, "prompt_len": 60, "output_len": 60, "seed": 0}}))
    session = RunSession(recipe, loaded=loaded)
    session.run()
    outs = session.outputs.values()
    assert session.rejected == [] and len(outs) == 2
    assert sorted(o.finish_reason for o in outs) == ["length", "length"]
    assert all(len(o.token_ids) == 60 for o in outs)
    assert sum(o.num_preemptions for o in outs) >= 1
    assert pool_is_whole(session.engine)


# ------------------------------------------------------------------------ the poisoned request


def test_a_request_poisoned_after_admission_ends_alone(loaded):
    prompts = [[100 + i, 200 + i, 300 + i] for i in range(4)]
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    clean = engine(loaded)
    clean_ids = {i: clean.add_request(p, params) for i, p in enumerate(prompts)}
    clean_outs = drain(clean)
    want = {i: clean_outs[rid].token_ids for i, rid in clean_ids.items()}

    e = engine(loaded)
    ids = {i: e.add_request(p, params) for i, p in enumerate(prompts)}
    poisoned = SamplingParams(max_tokens=12, temperature=0.7, seed=1)
    bad = e.add_request([7, 8, 9], poisoned)
    e.step()
    poisoned.temperature = math.nan  # bypasses admission: sampling it can only fail
    outs = drain(e)
    assert outs[bad].finish_reason == "error"
    assert {i: outs[rid].token_ids for i, rid in ids.items()} == want
    assert all(outs[rid].finish_reason == "length" for rid in ids.values())
    assert pool_is_whole(e)


# ------------------------------------------------------------------------ 4. bad input at the command line


RECIPE = """
model: {source: random, shape: tiny, seed: 0}
cache: {block_size: 4, num_blocks: 64}
scheduler: {max_model_len: 64}
sampling: {max_tokens: 4, ignore_eos: true}
workload: {prompts: ["hello there"]}
"""


@pytest.mark.parametrize("old,new,needles", [
    ("num_blocks: 64", "num_blocks: 1000000000000", ("cache: a pool of 1000000000000 blocks", "GiB free on cpu")),
    ("block_size: 4, num_blocks: 64", "block_size: 1000000000, num_blocks: 64", ("cache: a pool of 64 blocks",)),
    ("num_blocks: 64", "memory_gib: 1000000", ("cache: a pool of", "GiB free on cpu")),
    ('prompts: ["hello there"]', 'prompts: ["hello there"], repeat: 1000000000', ("workload.repeat: 1000000000",)),
    ('prompts: ["hello there"]', "synthetic: {num_requests: 1000000000}", ("workload.synthetic.num_requests",)),
    ('prompts: ["hello there"]', "synthetic: {prompt_len: 1000000000}", ("workload.synthetic.prompt_len",)),
    ('prompts: ["hello there"]', "synthetic: {shared_prefix: 1000000000}", ("workload.synthetic.shared_prefix",)),
    ("cache:", "attention_backend: triton\ncache:", ("attention_backend: triton runs on a CUDA device",)),
    ('workload: {prompts: ["hello there"]}', 'workload: {prompts: ["hello there"]}\n'
     "variants: [{name: small, overrides: {cache: {blok_size: 2}}}]", ("cache.blok_size", "in variant 'small'")),
])
def test_bad_recipes_answer_in_one_line_fast(tmp_path, old, new, needles):
    assert old in RECIPE
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace(old, new))
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    t0 = time.perf_counter()
    proc = subprocess.run(KVSCOPE + ["run", str(path), "--headless"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert time.perf_counter() - t0 < 15  # answered in seconds, not allocating or generating for ever
    one_line_error(proc, "r.yaml", *needles)


def test_replay_of_a_binary_file_and_kv_of_a_headless_model(tmp_path):
    binary = tmp_path / "x.jsonl"
    binary.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)  # a JPEG, say
    one_line_error(subprocess.run(KVSCOPE + ["replay", str(binary)], capture_output=True, text=True, timeout=120),
                   "x.jsonl:1", "not UTF-8")
    config = tmp_path / "config.json"
    config.write_text('{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 0, '
                      '"intermediate_size": 128, "vocab_size": 100}')
    for command in ("kv", "roofline"):
        proc = subprocess.run(KVSCOPE + [command, str(config)], capture_output=True, text=True, timeout=120)
        one_line_error(proc, "num_attention_heads", "must be a positive integer")


# ------------------------------------------------------------------------ 5. recordings


def record_run(loaded, path: Path, flush_every: int = 512) -> JsonlRecorder:
    bus = EventBus()
    recorder = bus.subscribe(JsonlRecorder(path, make_header("t", "cpu"), flush_every=flush_every))
    recipe = Recipe.from_dict(dict(TINY, sampling={"max_tokens": 6, "ignore_eos": True},
                                   workload={"prompts": ["a b c", "d e f g", "h"]}))
    RunSession(recipe, bus=bus, loaded=loaded).run()
    return recorder


def test_events_reach_the_file_at_every_step_end(loaded, tmp_path):
    path = tmp_path / "run.jsonl"
    recorder = record_run(loaded, path)  # not closed: as if the process were killed now
    lines = path.read_text().splitlines()
    assert len(lines) - 1 == recorder.count and recorder.count > 0
    assert '"kind": "step_end"' in lines[-1]  # everything up to the last step's end is on disk
    recorder.close()


def test_invalid_utf8_damage_is_reported_at_its_line(loaded, tmp_path):
    path = tmp_path / "run.jsonl"
    record_run(loaded, path).close()
    lines = path.read_bytes().split(b"\n")
    bad = 40
    lines[bad - 1] = lines[bad - 1][:20] + b"\xff\xfe" + lines[bad - 1][20:]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(RecordingError, match=rf"run.jsonl:{bad}: not UTF-8"):
        read_recording(path)
    rec = read_recording(path, strict=False)
    assert rec.damage.startswith(f"{path}:{bad}:") and len(rec.events) == bad - 2  # every event before it kept


def test_strict_replay_rejects_duplicated_and_reordered_events(loaded, tmp_path):
    path = tmp_path / "run.jsonl"
    record_run(loaded, path).close()
    good = path.read_text().splitlines(keepends=True)
    assert load_timeline(path, strict=True).num_positions > 1
    spliced = good[:30] + good[5:30] + good[30:]  # a block of events written twice
    path.write_text("".join(spliced))
    with pytest.raises(RecordingError, match=r"run.jsonl:\d+: .*(out of order|second time|begins before)"):
        load_timeline(path, strict=True)
    assert load_timeline(path, strict=False).num_positions > 1  # not strict: replays as before
    swapped = good[:]
    first_end = next(i for i, line in enumerate(good) if '"step_end"' in line)
    swapped[first_end], swapped[first_end + 1] = swapped[first_end + 1], swapped[first_end]
    path.write_text("".join(swapped))
    with pytest.raises(RecordingError, match=r"run.jsonl:\d+: "):
        load_timeline(path, strict=True)


class SlowFile:
    """Stands in for the recorder's file: a write waits (up to a timeout) until a second writer arrives, so two
    flushes overlap whenever the recorder lets them."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.inside = 0
        self.overlapped = False
        self.second = threading.Event()

    def write(self, data: bytes) -> int:
        self.inside += 1
        if self.inside > 1:
            self.overlapped = True
            self.second.set()
        else:
            self.second.wait(0.5)
        self.chunks.append(data)
        self.inside -= 1
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_recorder_flushed_from_two_threads_writes_each_event_once(tmp_path):
    from kvscope.events.records import StepBegin

    recorder = JsonlRecorder(tmp_path / "t.jsonl", make_header("t", "cpu"))
    recorder._file.close()
    recorder._file = slow = SlowFile()  # type: ignore[assignment]
    for step in range(5):
        recorder(StepBegin(step, step))
    threads = [threading.Thread(target=recorder.flush) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not slow.overlapped  # the second flush waited for the first
    assert b"".join(slow.chunks).count(b'"step_begin"') == 5 and recorder.count == 5


# ------------------------------------------------------------------------ 6. feeding the engine from a thread


def test_a_request_added_from_another_thread_waits_for_the_step_in_progress(loaded):
    """add_request from another thread while step() runs: it lands before or after the step, never inside it
    (in the middle of a step it mutated the queues the step was walking)."""
    from kvscope.events.vocabulary import Kind

    bus = EventBus()
    events = bus.subscribe(EventList())
    e = engine(loaded, bus)
    e.add_request([5, 6, 7], SamplingParams(max_tokens=2, ignore_eos=True))
    added = threading.Event()

    def add_from_another_thread() -> None:
        e.add_request([8, 9], SamplingParams(max_tokens=2, ignore_eos=True))
        added.set()

    def mid_step(event) -> None:  # the engine thread, inside its step: let the other thread try now
        if event.kind == Kind.KV and not added.is_set() and e.step_id == 0:
            threading.Thread(target=add_from_another_thread).start()
            added.wait(0.5)

    bus.subscribe(mid_step)
    e.step()
    assert added.wait(5)
    kinds = [(ev.kind, getattr(ev, "what", "")) for ev in events.events]
    first_end = kinds.index((Kind.STEP_END, ""))
    assert kinds.index((Kind.REQUEST, "arrived"), 2) > first_end  # the second arrival came after the step
    drain(e)
    assert pool_is_whole(e)


def test_add_request_from_another_thread_while_stepping(loaded):
    bus = EventBus()
    bus.subscribe(EventList())  # a step then builds its StepEnd, walking the waiting queue
    e = engine(loaded, bus, cache={"block_size": 4, "num_blocks": 256}, scheduler={"max_num_seqs": 2})
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    added: list[int] = []
    errors: list[BaseException] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def feed() -> None:
        try:
            for i in range(400):
                added.append(e.add_request([100 + i % 50, 7, 8], params))
        except BaseException as exc:  # reported below
            errors.append(exc)

    feeder = threading.Thread(target=feed)
    outs: dict = {}
    try:
        feeder.start()
        while feeder.is_alive() or e.has_unfinished():
            for o in e.step():
                assert o.request_id not in outs
                outs[o.request_id] = o
    finally:
        sys.setswitchinterval(old)
        feeder.join()
    assert errors == []
    assert sorted(outs) == sorted(added) == list(range(400))
    assert all(len(o.token_ids) == 3 for o in outs.values()) and pool_is_whole(e)


# ------------------------------------------------------------------------ randomised sequences

OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.integers(0, 2)),
    st.tuples(st.just("step"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("abort"), st.integers(0, 40), st.just(0), st.just(0)),
), min_size=1, max_size=40)


def check_engine(e: LLMEngine, finished: dict, aborted: set) -> None:
    s, bm = e.scheduler, e.block_manager
    running, waiting = {r.request_id for r in s.running}, {r.request_id for r in s.waiting}
    assert not running & waiting
    for rid, req in e.requests.items():
        if req.status is RequestStatus.FINISHED:
            assert rid not in running | waiting and req.finish_reason
            assert req.finish_reason in ("stop", "length") or (req.finish_reason == "abort" and rid in aborted)
        elif req.status is RequestStatus.RUNNING:
            assert rid in running
        else:
            assert rid in waiting and not req.block_table
    holders = Counter(b for r in e.requests.values() for b in r.block_table)
    assert all(bm.ref_counts[b] == holders.get(b, 0) for b in range(bm.num_blocks))
    assert set(finished) <= set(e.requests)


@pytest.mark.parametrize("chunked,prefix", [(True, True), (False, True), (True, False), (False, False)])
def test_random_add_step_abort_sequences_keep_every_request_accounted_for(loaded, chunked, prefix):
    @settings(max_examples=40, deadline=None)
    @given(ops=OPS)
    def run(ops):
        e = engine(loaded, cache={"block_size": 4, "num_blocks": 14, "prefix_caching": prefix},
                   scheduler={"max_num_batched_tokens": 24, "chunked_prefill": chunked, "max_model_len": 48})
        finished: dict[int, str] = {}
        aborted: set[int] = set()
        shared = [[300 + i for i in range(12)], [400 + i for i in range(8)], []]

        def record(outs) -> None:
            for o in outs:
                assert o.request_id not in finished, "finished twice"
                finished[o.request_id] = o.finish_reason

        for op, a, b, c in ops:
            if op == "add":
                try:
                    e.add_request(shared[c] + [100 + (a * 7 + i) % 50 for i in range(a)],
                                  SamplingParams(max_tokens=b, ignore_eos=True))
                except RequestError:
                    pass  # refused at admission: never in the engine
            elif op == "abort" and e.requests:
                rid = a % len(e.requests)
                if e.abort(rid):
                    assert rid not in finished
                    finished[rid] = "abort"
                    aborted.add(rid)
            else:
                record(e.step())
            check_engine(e, finished, aborted)
        for _ in range(2000):
            if not e.has_unfinished():
                break
            record(e.step())
            check_engine(e, finished, aborted)
        assert set(finished) == set(e.requests)  # each finished exactly once
        assert all(reason != "abort" or rid in aborted for rid, reason in finished.items())
        assert pool_is_whole(e)

    run()
