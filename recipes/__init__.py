"""The recipes shipped with kvscope: YAML files (quickstart, chunked prefill, prefix cache, preemption,
disaggregation, the simulated GPUs, ...) that `kvscope run` and friends read; see docs/recipes.md. No code."""
