"""vLLM beside kvscope in the tests: the servers of benchmarks/serve_processes.py (vLLM from `.venv-vllm` on
`build/smollm2-hf`, kvscope serve from this interpreter), and the mark that skips a module, naming the make
target to run, where `make vllm-venv` / `make smollm2-hf` have not run (`make test` runs both first)."""

import pytest

from support.paths import load_benchmark

serve_processes = load_benchmark("serve_processes")
vllm_server = serve_processes.vllm_server
kvscope_server = serve_processes.kvscope_server
SERVED_NAME: str = serve_processes.SERVED_NAME
VLLM_PYTHON = serve_processes.VLLM_VENV / "bin" / "python"
SMOLLM2_HF = serve_processes.SMOLLM2_HF
vllm_env = serve_processes.vllm_env

_missing = serve_processes.vllm_missing()
requires_vllm = pytest.mark.skipif(_missing is not None, reason=_missing or "")
