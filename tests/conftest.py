"""Test-wide set-up: Triton runs through its interpreter on CPU, Hugging Face never goes online; shared fixtures."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one torch thread; on a shared CPU, more threads spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance every Ray test shares (2 CPUs, no dashboard); shut down after the last test."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(params=["avx512", "portable"])
def cpu_isa(request, monkeypatch):
    """The C kernels' build a test runs on (KVSCOPE_CPU_ISA, kvscope.kernels.cpu.c_library): the hand-written
    AVX-512 paths where this CPU runs them (skipped elsewhere, saying why), and the portable C on every CPU."""
    from kvscope.kernels.cpu.c_library import cpu_lacks

    why = cpu_lacks(request.param)
    if why is not None:
        pytest.skip(why)
    monkeypatch.setenv("KVSCOPE_CPU_ISA", request.param)
    return request.param
