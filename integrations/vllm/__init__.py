"""The vLLM plugin: vLLM's own block pool, scheduler steps and requests as kvscope events.

plugin.py    the entry points (`vllm.general_plugins`: register; `vllm.endpoint_plugins`: KVScopeEndpoint),
             off unless KVSCOPE_VLLM=1 and vLLM's version is one it was tested with
hooks.py     wraps Scheduler.schedule / update_from_output (what they return is untouched); any error
             disables the plugin with one line in vLLM's log
tracker.py   after each of those calls, vLLM's state diffed against the last: events with vLLM's block ids
transport.py the engine core's events to the API process over a local socket (never blocking vLLM)
routes.py    /kvscope/v1/snapshot and /kvscope/v1/events on vLLM's own API server, as `kvscope serve` has them

Nothing here imports vLLM at module level: the main venv (no vLLM) imports, lints and type-checks it.
"""
