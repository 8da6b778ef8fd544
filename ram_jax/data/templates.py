"""Prompts: the one template syntax (`{prompt}`) and the one way to turn prompts into ids.

A template is a name from `TEMPLATES` or any string holding `{prompt}`, which
is replaced by the raw prompt text verbatim (no other braces are read, so
templates may contain JSON or code). Training (`data.prompt_template`),
proposal sampling (`--prompt_template`) and decoding (`--template`) all accept
the same values, and `encode_prompts` tokenizes them the same way in all
three, so the aligner sees at training time exactly the prompts it is decoded on.
"""

from __future__ import annotations

from collections.abc import Sequence

PLACEHOLDER = "{prompt}"
TEMPLATES = {
    "raw": PLACEHOLDER,
    # The reference's UltraChat / TL;DR template; the trailing space is part of it.
    "human_assistant": "\n\nHuman: {prompt}\n\nAssistant: ",
}


def resolve(template: str) -> str:
    """The template string of a name in `TEMPLATES`, or `template` itself if it holds `{prompt}`."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    if PLACEHOLDER not in template:
        raise ValueError(
            f"template {template!r} is neither a name in {sorted(TEMPLATES)} nor a string "
            f"containing {PLACEHOLDER!r}."
        )
    return template


def apply(template: str, prompt: str) -> str:
    """`prompt` wrapped in `template` (a name or a `{prompt}` string)."""
    return resolve(template).replace(PLACEHOLDER, prompt)


def encode_prompts(
    tokenizer,
    texts: Sequence[str],
    template: str = "raw",
    *,
    bos_id: int | None = None,
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each templated prompt.

    The tokenizer adds no special tokens (the reference adds none); `bos_id`,
    when given, is put first. `max_length` keeps each prompt's last tokens
    (the end, next to the response), the BOS staying first.
    """
    template = resolve(template)
    encoded = tokenizer.encode_batch([apply(template, t) for t in texts], add_special_tokens=False)
    head = [] if bos_id is None else [int(bos_id)]
    if max_length is None:
        return [head + list(e.ids) for e in encoded]
    keep = max_length - len(head)
    if keep < 1:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt token.")
    return [head + list(e.ids)[-keep:] for e in encoded]
