"""kvscope inside other engines: plugins that turn a foreign engine's own state into kvscope's event schema,
so the TUI, the traces and replay work on it unchanged. One sub-package per engine (vllm/)."""
