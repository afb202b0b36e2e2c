"""Run inside the vLLM venv (tests/integrations/test_vllm_plugin.py starts it): vLLM's offline LLM with n-gram
speculation and kvscope's plugin on, in one process. The plugin's SpecDecode events, summed, must equal vLLM's
own spec-decode counters (drafts, accepted tokens), and every accepted run must fit its drafts. Prints one
JSON line of findings."""

import json
import os
import sys

os.environ.update({"KVSCOPE_VLLM": "1", "VLLM_PLUGINS": "kvscope", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})


def main() -> None:
    from vllm import LLM, SamplingParams

    from kvscope.integrations.vllm import plugin

    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, block_size=32,
              num_gpu_blocks_override=40, max_num_seqs=4, seed=0, disable_log_stats=False,
              speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
                                  "prompt_lookup_min": 1})
    relay = plugin.relay()
    assert relay is not None and plugin._Installed.hooks is not None and plugin._Installed.hooks.active
    prompts = ["1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3,", "the cat sat on the mat. the cat sat on the mat. the cat",
               "a b c d a b c d a b c d a b"]
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True), use_tqdm=False)
    from kvscope.events.vocabulary import Kind

    specs = [e for _, e in relay.hub.read_after(0).events if e.kind == Kind.SPEC]
    theirs = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
    findings = {"spec_events": len(specs), "drafts": sum(e.num_draft_tokens for e in specs),
                "accepted": sum(e.num_accepted for e in specs),
                "vllm_drafts": theirs.get("vllm:spec_decode_num_draft_tokens"),
                "vllm_accepted": theirs.get("vllm:spec_decode_num_accepted_tokens"),
                "consistent": all(0 <= e.num_accepted <= e.num_draft_tokens for e in specs),
                "hooks_active": plugin._Installed.hooks.active}
    print("FINDINGS " + json.dumps(findings))


if __name__ == "__main__":
    main()
