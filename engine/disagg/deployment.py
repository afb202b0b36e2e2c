"""Building a recipe's disaggregated deployment: its engines (in this process, simulated, or as Ray actors),
each decode engine connected to every prefill engine, and the proxy in front (kvscope.engine.disagg.proxy)."""

from __future__ import annotations

from kvscope.config.recipe import Recipe
from kvscope.engine.core.request_check import RequestCheck
from kvscope.engine.disagg.handles import CONSUMER, PRODUCER, LocalEngine, LocalPeer
from kvscope.engine.disagg.proxy import DisaggregatedEngine
from kvscope.engine.llm_engine import LLMEngine
from kvscope.engine.model.loader import LoadedModel, load_for_recipe
from kvscope.engine.probe.op_timer import RangeHook
from kvscope.events.bus import EventBus


def build_local_deployment(recipe: Recipe, loaded: LoadedModel | None = None, range_hook: RangeHook | None = None,
                           kernel_events: bool = True, bus: EventBus | None = None) -> DisaggregatedEngine:
    """Every engine of the recipe's deployment in this process, sharing one loaded model (its weights are
    read-only); each decode engine reads from every prefill engine."""
    loaded = loaded or load_for_recipe(recipe)
    spec = recipe.deployment

    def engine(role: str, name: str) -> LLMEngine:
        return LLMEngine(recipe, loaded=loaded, bus=EventBus(), range_hook=range_hook, kernel_events=kernel_events,
                         kv_role=role, engine_id=name)

    prefill = [engine(PRODUCER, f"prefill-{i}") for i in range(spec.prefill)]
    decode = [engine(CONSUMER, f"decode-{i}") for i in range(spec.decode)]
    for d in decode:
        if d.sim is not None:  # simulated engines: the transfer is a modelled link on the decode side's clock
            from kvscope.engine.disagg.sim_link import SimLinkPeer

            d.kv_peers.update({p.engine_id: SimLinkPeer(p, d.sim.clock, spec.link_gb_s, spec.link_latency_us)
                               for p in prefill})
        else:
            d.kv_peers.update({p.engine_id: LocalPeer(p) for p in prefill})
    front = prefill[0]
    return DisaggregatedEngine(recipe, [LocalEngine(e) for e in prefill], [LocalEngine(e) for e in decode],
                               front.request_check, loaded.config, str(front.device), front.backend_name, bus)


def build_ray_deployment(recipe: Recipe, kernel_events: bool = True,
                         bus: EventBus | None = None) -> DisaggregatedEngine:
    """Every engine of the recipe's deployment a Ray actor (kvscope.engine.disagg.ray_engine); the proxy here reads
    only the model's shape and tokenizer."""
    from kvscope.engine.disagg.ray_engine import start_ray_deployment
    from kvscope.engine.model.loader import load_shape

    config, tokenizer = load_shape(recipe.model)
    prefill, decode = start_ray_deployment(recipe, kernel_events)
    front = RequestCheck(recipe, config, tokenizer, min(h.num_blocks for h in prefill + decode))
    return DisaggregatedEngine(recipe, prefill, decode, front, config, prefill[0].device, "torch", bus)


def build_deployment(recipe: Recipe, loaded: LoadedModel | None = None, range_hook: RangeHook | None = None,
                     kernel_events: bool = True, bus: EventBus | None = None) -> DisaggregatedEngine:
    """The recipe's disaggregated deployment, over its transport; `bus` carries the proxy's client-level request
    events (arrived, finished: the ids add_request returned)."""
    if recipe.deployment.transport == "ray":
        return build_ray_deployment(recipe, kernel_events, bus)
    return build_local_deployment(recipe, loaded, range_hook, kernel_events, bus)
