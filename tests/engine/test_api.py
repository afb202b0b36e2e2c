"""The package's front door: `from kvscope import LLM, SamplingParams`, without torch until it is needed."""

import subprocess
import sys

import pytest


def test_llm_and_sampling_params_from_the_package_generate():
    from kvscope import LLM, SamplingParams
    from kvscope.config.sampling_params import SamplingParams as EngineParams
    from kvscope.engine.llm import LLM as EngineLLM

    assert LLM is EngineLLM and SamplingParams is EngineParams
    llm = LLM({"model": {"source": "random", "shape": "tiny", "seed": 0}, "cache": {"block_size": 4, "num_blocks": 32}})
    outs = llm.generate(["hello", "paged attention"], SamplingParams(max_tokens=5, ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [5, 5] and all(o.finish_reason == "length" for o in outs)


def test_import_kvscope_does_not_import_torch():
    code = "import sys, kvscope; assert 'torch' not in sys.modules; print(kvscope.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == __import__("kvscope").__version__


def test_unknown_name_is_an_attribute_error():
    import kvscope

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kvscope.nope  # noqa: B018
