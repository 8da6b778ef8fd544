"""Host-side prompt batches for decoding: checks, bucketing, left padding, stop strings.

Nothing here runs on the accelerator. Prompts are left padded (so every row's
next token sits in the last column) to a power-of-two bucket length, so a
stream of prompts of varying lengths compiles the decoder once per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ram_jax.models.config import ModelConfig


def bucket_length(length: int, min_bucket: int = 16) -> int:
    """The smallest power of two >= `length` (at least `min_bucket`)."""
    bucket = max(int(min_bucket), 1)
    while bucket < length:
        bucket *= 2
    return bucket


def check_prompts(
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    configs: Sequence[ModelConfig],
    vocab_size: int,
) -> None:
    """Rejects empty prompts, out-of-vocabulary ids and over-long requests, before compute."""
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    if len(prompts) == 0:
        raise ValueError("no prompts to decode; pass at least one prompt.")
    context = min(c.max_position_embeddings for c in configs)
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(
                f"prompt {i} is empty; every prompt needs at least one token (e.g. a template)."
            )
        if len(prompt) + max_new_tokens > context:
            raise ValueError(
                f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} "
                f"that exceeds the model context of {context} positions. Shorten the prompt "
                "(keep its end) or lower max_new_tokens."
            )
        bad = [t for t in prompt if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(
                f"prompt {i} holds ids {bad[:5]} outside the tokenizer's [0, {vocab_size})."
            )


def left_pad(
    prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(tokens_BxT int32, mask_BxT bool)`, left padded to `length`.

    With `rows` > len(prompts), the batch is filled with copies of the first
    prompt (callers drop those rows), keeping the compiled batch shape.
    """
    rows = rows or len(prompts)
    tokens = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), bool)
    for i in range(rows):
        prompt = prompts[i] if i < len(prompts) else prompts[0]
        if len(prompt) > length:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit length {length}.")
        if len(prompt):
            tokens[i, length - len(prompt) :] = prompt
            mask[i, length - len(prompt) :] = True
    return tokens, mask


def response_ids(tokens_R: Sequence[int], length: int, eos_ids: Sequence[int]) -> list[int]:
    """The generated ids of one row up to (not including) its first EOS."""
    out = []
    for t in list(tokens_R)[: int(length)]:
        if int(t) in eos_ids:
            break
        out.append(int(t))
    return out


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """Cuts `text` at the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at >= 0:
                cut = min(cut, at)
    return text[:cut]
