"""A run of a recipe's workload on an engine, one step at a time.

The session feeds requests to the engine as they arrive. Arrival offsets are
measured on the session's own clock, which advances by the time spent inside
steps (on the bus's clock: the monotonic one, or a simulated device's virtual one) and
jumps over idle gaps, so pausing (the TUI) or slow steps never make requests pile up and
a run never sleeps. On a simulated device an idle gap moves the virtual clock too.

A request the engine cannot serve (prompt longer than the context, more KV
than the pool) is rejected with a one-line message in `rejected`; the others run.

The session drives its engine as an EngineClient (kvscope.engine.engine_client): one LLMEngine, or the
proxy of a disaggregated deployment (then also `deployment`, for what only a deployment has).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kvscope.config.recipe import Recipe
from kvscope.engine.core.request import RequestOutput
from kvscope.engine.engine_client import EngineClient
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import LoadedModel
from kvscope.engine.probe.op_timer import RangeHook
from kvscope.engine.workload import WorkItem, build_workload
from kvscope.errors import RecipeError, RequestError
from kvscope.events.bus import EventBus

if TYPE_CHECKING:
    from kvscope.engine.disagg.proxy import DisaggregatedEngine


class RunSession:
    def __init__(self, recipe: Recipe, bus: EventBus | None = None, range_hook: RangeHook | None = None,
                 kernel_events: bool = True, loaded: LoadedModel | None = None) -> None:
        self.recipe = recipe
        self.bus = bus or EventBus()
        self.engine: EngineClient
        self.deployment: DisaggregatedEngine | None = None  # the engine when it is a deployment's proxy
        if recipe.deployment.disaggregated:  # engines of their own, each with its own bus (`buses`)
            from kvscope.engine.disagg.deployment import build_deployment

            self.engine = self.deployment = build_deployment(recipe, loaded, range_hook, kernel_events, bus=self.bus)
        else:
            self.engine = LLMEngine(recipe, loaded=loaded, bus=self.bus, range_hook=range_hook,
                                    kernel_events=kernel_events)
        self.tokenizer = self.engine.tokenizer
        cfg = self.engine.config
        special = set(self.tokenizer.eos_token_ids)
        if cfg.bos_token_id is not None:
            special.add(cfg.bos_token_id)
        self.items: list[WorkItem] = build_workload(recipe, cfg.vocab_size, special)
        self._check_pool_holds_some_request()
        self.reset(first=True)

    def _check_pool_holds_some_request(self) -> None:
        """A pool that can hold none of the workload's requests is a recipe error, not a per-request one."""
        engine = self.engine
        needs = [engine.blocks_needed(len(engine.encode_prompt(item.prompt)), item.params.max_tokens)
                 for item in self.items]
        if needs and min(needs) > engine.num_blocks:
            raise RecipeError(f"{self.recipe.source}: cache: a pool of {engine.num_blocks} blocks of "
                              f"{engine.block_size} tokens holds no request of this workload (the smallest needs "
                              f"{min(needs)} blocks)")

    def reset(self, first: bool = False) -> None:
        """Start the workload again from nothing (fresh engine state, same model)."""
        if not first:
            self.engine.reset()
        self.clock_s = 0.0
        sim = self.engine.sim
        self._origin_ns = sim.clock() if sim is not None else 0  # virtual ns at the session's time 0
        self.next_item = 0
        self.outputs: dict[int, RequestOutput] = {}
        self.rejected: list[str] = []
        self.request_ids: list[int] = []
        self.steps = 0
        self.wall_s = 0.0

    @property
    def done(self) -> bool:
        return self.next_item >= len(self.items) and not self.engine.has_unfinished()

    def _admit_due(self) -> None:
        items = self.items
        if not self.engine.has_unfinished() and self.next_item < len(items):
            self.clock_s = max(self.clock_s, items[self.next_item].arrival_s)
            if self.engine.sim is not None:
                self.engine.sim.clock.advance_to(self._origin_ns + round(self.clock_s * 1e9))
        while self.next_item < len(items) and items[self.next_item].arrival_s <= self.clock_s:
            item = items[self.next_item]
            index = self.next_item
            self.next_item += 1
            try:
                self.request_ids.append(self.engine.add_request(item.prompt, item.params))
            except RequestError as exc:
                self.rejected.append(f"{self.recipe.source}: workload request {index}: {exc}")

    def step(self) -> bool:
        """Admit due requests and run one scheduler step; False once the workload is done."""
        if self.done:
            return False
        self._admit_due()
        if not self.engine.has_unfinished():
            return not self.done
        clock = self.bus.clock  # the engine's clock: monotonic, virtual on a simulated device, or the caller's
        c0, t0 = clock(), time.perf_counter()
        for out in self.engine.step():
            self.outputs[out.request_id] = out
        self.clock_s += (clock() - c0) / 1e9
        self.wall_s += time.perf_counter() - t0
        self.steps += 1
        return not self.done

    def run(self) -> None:
        while self.step():
            pass

    @property
    def buses(self) -> dict[str, EventBus]:
        """Each engine's bus by engine id: a deployment's engines, or {"engine": bus} for one engine."""
        return self.engine.buses

    def close(self) -> None:
        """Stop what the run started outside this process (a deployment's Ray actors)."""
        self.engine.close()

    def failure_report(self) -> str | None:
        """A deployment's one line on requests that failed with an engine or a transfer (None: none did)."""
        return self.engine.failure_report()

    # --- engine truth, for cross-checks ---------------------------------------------------
    def one_engine(self) -> LLMEngine:
        """The session's engine when it runs one (its pool is what the cross-checks read)."""
        if not isinstance(self.engine, LLMEngine):
            raise TypeError("the cross-checks read one engine's pool; this session runs a deployment "
                            "(its engines: session.deployment.engines)")
        return self.engine

    def snapshot_tables(self) -> dict[int, list[int]]:
        return self.one_engine().block_tables()

    def free_block_ids(self) -> set[int]:
        return self.one_engine().block_manager.free_block_ids()

    def cached_block_ids(self) -> set[int]:
        return self.one_engine().block_manager.cached_block_ids()
