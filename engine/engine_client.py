"""EngineClient (vLLM's name): what drives an engine from outside it, whichever engine it is.

A RunSession (kvscope.engine.session), the server's engine thread (kvscope.serve.server.engine_loop), the
bench and the text probe hold an EngineClient: an LLMEngine (kvscope.engine.llm_engine) or the proxy in
front of a disaggregated deployment (kvscope.engine.disagg.proxy.DisaggregatedEngine), whose engines it reaches
through EngineHandles (kvscope.engine.disagg.handles: in this process, or Ray actors). Requests go in
(add_request, abort), steps run (step, has_unfinished), outputs and running requests come back (output,
requests, queue_depths; forget drops a finished one's record), and a prompt is checked before it is sent
(encode_prompt, which with a `limit` refuses a prompt too long to ever fit before tokenizing it; blocks_needed,
check_fits). `buses` are the engines' own buses by engine id (an engine on its
own: its one bus), `close` stops what the engine started outside this process, `failure_report` names the
requests an engine or a transfer lost, `sim` is the simulated time of a simulated device (None on a real one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from kvscope.config.model_config import ModelConfig
    from kvscope.config.sampling_params import SamplingParams
    from kvscope.engine.core.request import RequestOutput, RequestStatus
    from kvscope.engine.core.request_check import Prompt
    from kvscope.engine.model.tokenizer import Tokenizer
    from kvscope.events.bus import EventBus


@runtime_checkable
class RequestState(Protocol):
    """A request as a client follows it while it runs (an engine's Request, the proxy's ProxyRequest)."""

    @property
    def request_id(self) -> int: ...
    @property
    def prompt_token_ids(self) -> list[int]: ...
    @property
    def output_token_ids(self) -> list[int]: ...
    @property
    def token_ids(self) -> list[int]: ...  # prompt + output so far
    @property
    def num_prompt_tokens(self) -> int: ...
    @property
    def num_output_tokens(self) -> int: ...
    @property
    def status(self) -> RequestStatus: ...
    @property
    def finish_reason(self) -> str: ...  # "" until it finishes
    @property
    def num_cached_tokens(self) -> int: ...


class VirtualClock(Protocol):
    """A simulated device's time: ns now, and a jump over an idle gap (never backwards)."""

    def __call__(self) -> int: ...
    def advance_to(self, ns: int) -> None: ...


@runtime_checkable
class SimulatedTime(Protocol):
    """What a session asks of a simulated device (kvscope.engine.sim.setup.Simulation, or a deployment's)."""

    @property
    def clock(self) -> VirtualClock: ...


@runtime_checkable
class EngineClient(Protocol):
    """An engine as its drivers see it (module docstring)."""

    config: ModelConfig
    tokenizer: Tokenizer
    bus: EventBus  # the client-level events: arrivals, steps, finishes under the ids add_request returned
    num_blocks: int  # the KV pool's blocks (a deployment: its smallest engine's)
    block_size: int
    max_model_len: int
    backend_name: str

    @property
    def device(self) -> object:
        """What the engine runs on, as str() names it ("cpu", "cuda:0", "simulated 1xH100")."""
        ...

    @property
    def requests(self) -> Mapping[int, RequestState]:
        """The requests it holds, by id (finished ones until `forget`)."""
        ...

    @property
    def sim(self) -> SimulatedTime | None: ...

    @property
    def buses(self) -> dict[str, EventBus]: ...

    def encode_prompt(self, prompt: Prompt, limit: int | None = None) -> list[int]: ...
    def blocks_needed(self, num_prompt_tokens: int, max_tokens: int) -> int: ...
    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> int: ...
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None) -> int: ...
    def step(self) -> list[RequestOutput]: ...
    def has_unfinished(self) -> bool: ...
    def abort(self, request_id: int) -> bool: ...
    def forget(self, request_id: int) -> None: ...
    def output(self, request_id: int) -> RequestOutput: ...
    def queue_depths(self) -> tuple[int, int]: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...
    def failure_report(self) -> str | None: ...
