"""The reference implementation's decoding loop in PyTorch: the decode benchmark's baseline.

HF `LlamaForCausalLM` copies of both models (the same weights through
`save_hf` / `from_pretrained`), batch 1, a Python loop over tokens feeding both
`past_key_values`, and the par_kl warper in torch per token (KL gate, P's
nucleus, temperature, repetition penalty, top-p, `torch.multinomial`).
torch and transformers are imported only when it runs.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np

from ram_jax.decoding.sampling import SamplingParams
from ram_jax.models import convert


def par_kl_tokens_per_s(models, configs, s: SamplingParams, vocab: int, prompt: int, new: int):
    """Tokens/s of the reference loop decoding `new` tokens after a random `prompt`.

    `models`/`configs`: (proposal, aligner) params and configs; `s`: the par_kl
    settings. Returns (tokens/s, the torch thread count that gave it).
    """
    import torch
    import transformers

    torch.manual_seed(0)
    # Compare like with like: on a GPU host the baseline runs on the GPU too.
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        hf = []
        for name, params, config in zip("pq", models, configs, strict=True):
            convert.save_hf(params, config, os.path.join(tmp, name))
            hf.append(
                transformers.AutoModelForCausalLM.from_pretrained(
                    os.path.join(tmp, name), dtype=torch.float32
                )
                .to(device)
                .eval()
            )

    def top_p(logits, p):
        sorted_logits, idx = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        remove = (torch.cumsum(probs, -1) - probs) >= p
        return logits.masked_fill(remove.scatter(-1, idx, remove), -float("inf"))

    def warp(logits, seen):
        logits = logits / s.temperature
        score = torch.gather(logits, 1, seen)
        score = torch.where(score < 0, score * s.repetition_penalty, score / s.repetition_penalty)
        logits = logits.scatter(1, seen, score)
        return top_p(logits, s.top_p)

    ids = torch.from_numpy(np.random.default_rng(0).integers(1, vocab, (1, prompt))).to(device)

    @torch.inference_mode()
    def run(n):
        out_p, out_q = hf[0](input_ids=ids, use_cache=True), hf[1](input_ids=ids, use_cache=True)
        seen = ids
        t0 = time.perf_counter()
        for _ in range(n):
            p, q = out_p.logits[:, -1], out_q.logits[:, -1]
            lp, lq = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
            kl = torch.sum(lp.exp() * (lp - lq), -1)
            if kl.item() <= s.kl_threshold:
                nucleus = top_p(p / s.proposal_temperature, s.proposal_top_p)
                chosen = q.masked_fill(torch.isinf(nucleus), -float("inf"))
            else:
                chosen = p
            tok = torch.multinomial(torch.softmax(warp(chosen, seen), -1), 1)
            seen = torch.cat([seen, tok], 1)
            out_p = hf[0](input_ids=tok, past_key_values=out_p.past_key_values, use_cache=True)
            out_q = hf[1](input_ids=tok, past_key_values=out_q.past_key_values, use_cache=True)
        return n / (time.perf_counter() - t0)

    # Under CPU contention OpenMP threads can slow torch down several-fold: give
    # the baseline its best thread count.
    best = {}
    for threads in (1, 2) if device == "cpu" else (torch.get_num_threads(),):
        torch.set_num_threads(threads)
        run(2)  # warm-up
        best[threads] = run(min(new, 16))
    threads = max(best, key=best.get)
    torch.set_num_threads(threads)
    return run(new), threads
