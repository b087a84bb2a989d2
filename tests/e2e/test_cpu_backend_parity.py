"""The C CPU backend on the default model vs the HF transformers and llama.cpp goldens.

The C matmuls quantize activations to 8 bits on the fly (as llama.cpp does), so exact
equality with the fp32 reference is not expected everywhere: at the first divergence, each
side's token must be in the other's top-5 (tests/helpers/near_tie.py). llama.cpp on the same
file (golden/make_llamacpp_golden.py) is the second reference. Divergences are printed (run
with -s) for the closing note.
"""

from __future__ import annotations

import json
import os

import pytest

from localserve import LLM, SamplingParams
from localserve.kernels.cpu import available
from tests.helpers.near_tie import first_divergence

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "gemma3_270m_greedy.json")
LLAMACPP = os.path.join(os.path.dirname(__file__), "golden", "gemma3_270m_llamacpp_greedy.json")

pytestmark = pytest.mark.skipif(not available(), reason="the C kernels could not be built here")


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ours(golden) -> dict[str, tuple[list[int], list]]:
    """The C backend's first 32 greedy ids and top-5 logprobs for every golden prompt."""
    llm = LLM(backend="cpu", max_num_batched_tokens=512)
    assert llm.engine.info.backend == "cpu"
    assert llm.engine.runner.use_c  # really the C path, not the fallback
    keys = list(golden["prompts"])
    params = SamplingParams(max_tokens=golden["num_tokens"], temperature=0, ignore_eos=True,
                            logprobs=5)
    outs = llm.generate([golden["prompts"][k]["prompt_ids"] for k in keys], params)
    return {k: (o.outputs[0].token_ids, [s.top_logprobs for s in o.outputs[0].logprobs])
            for k, o in zip(keys, outs, strict=True)}


def compare(ours: dict, reference: dict) -> dict[str, str]:
    report = {}
    for key, (ids, top) in ours.items():
        ref = reference["prompts"][key]
        at = first_divergence(ids, top, ref["greedy_ids"], ref["top5"])
        report[key] = "equal" if at is None else f"near-tie at token {at}"
    return report


def test_cpu_backend_greedy_matches_reference_or_near_ties(ours, golden):
    report = compare(ours, golden)
    print("cpu backend vs HF goldens:", report)
    # Most prompts must match exactly; near-ties are the exception, not the rule.
    assert sum(v == "equal" for v in report.values()) >= len(report) // 2, report


def test_cpu_backend_greedy_matches_llamacpp(ours, golden):
    """The issue's rule: the first 32 greedy ids equal those of llama.cpp (which quantizes
    activations as we do) up to a near-tie (`compare` raises on any other divergence), and
    most prompts equal the fp32 reference or llama.cpp exactly."""
    with open(LLAMACPP) as f:
        llamacpp = json.load(f)
    assert [p["prompt_ids"] for p in llamacpp["prompts"].values()] == \
        [p["prompt_ids"] for p in golden["prompts"].values()]
    vs_llamacpp = compare(ours, llamacpp)
    vs_hf = compare(ours, golden)
    print("cpu backend vs llama.cpp goldens:", vs_llamacpp)
    exact = [k for k in ours if "equal" in (vs_hf[k], vs_llamacpp[k])]
    print("exactly equal to HF or llama.cpp:", exact)
    assert len(exact) > len(ours) // 2, (vs_hf, vs_llamacpp)


def test_weights_stay_quantized_in_memory():
    """Loading grows RSS by at most 1.5x the GGUF file (a dequantized fp32 copy would be ~4x)."""
    import gc

    import psutil

    from localserve.backends.cpu.runner import CpuModelRunner
    from localserve.config import default_model_path, engine_config
    from localserve.platform.probe import probe

    path = default_model_path()
    runner = CpuModelRunner(engine_config(model=path, backend="cpu"), probe())
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    runner.load_model()
    gc.collect()
    growth = proc.memory_info().rss - before
    size = os.path.getsize(path)
    print(f"RSS growth {growth / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB GGUF file")
    assert growth <= 1.5 * size
