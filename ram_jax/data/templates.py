"""Prompts: the one template syntax (`{prompt}` or `chat`) and the one way to turn prompts into ids.

A template is a name from `TEMPLATES`, any string holding `{prompt}`, or
`chat`. A `{prompt}` template has the raw prompt text put in verbatim (no
other braces are read, so templates may contain JSON or code). `chat` renders
the checkpoint's own chat template (`ram_jax.data.chat_template`) with an
assistant turn opened: a prompt string becomes one user message, and a prompt
may also be a whole conversation (rows in the `messages` format). Training
(`data.prompt_template`), proposal sampling (`--prompt_template`) and decoding
(`--template`) all accept the same values, and `encode_prompts` tokenizes them
the same way in all three, so the aligner sees at training time exactly the
prompts it is decoded on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ram_jax.data import chat_template as chat

PLACEHOLDER = "{prompt}"
CHAT = "chat"
TEMPLATES = {
    "raw": PLACEHOLDER,
    # The reference's UltraChat / TL;DR template; the trailing space is part of it.
    "human_assistant": "\n\nHuman: {prompt}\n\nAssistant: ",
}


def resolve(template: str) -> str:
    """The string of a name in `TEMPLATES`, `chat`, or `template` itself if it holds `{prompt}`."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    if template == CHAT:
        return CHAT
    if PLACEHOLDER not in template:
        raise ValueError(
            f"template {template!r} is neither a name in {sorted(TEMPLATES) + [CHAT]} nor a "
            f"string containing {PLACEHOLDER!r}."
        )
    return template


def apply(template: str, prompt: str) -> str:
    """`prompt` wrapped in `template` (a name or a `{prompt}` string; not `chat`)."""
    template = resolve(template)
    if template == CHAT:
        raise ValueError("the chat template needs the tokenizer's files; use encode_prompts.")
    return template.replace(PLACEHOLDER, prompt)


def as_messages(prompt) -> list[dict]:
    """A prompt as a conversation: a string is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def check(template: str, chat_template: str | None) -> None:
    """Raises ValueError for an unknown template, or `chat` without a chat template."""
    if resolve(template) == CHAT and not chat_template:
        raise ValueError(
            "template 'chat' needs the tokenizer's chat template, and this tokenizer has none "
            "(no 'chat_template' in tokenizer_config.json, no chat_template.jinja); pass the "
            "Instruct checkpoint's directory as the tokenizer, or use a {prompt} template."
        )


def render(
    template: str,
    prompt,
    *,
    chat_template: str | None = None,
    special_tokens: Mapping[str, str] | None = None,
) -> str:
    """The text of one prompt (a string, or a conversation for `chat`) under `template`."""
    template = resolve(template)
    if template != CHAT:
        if not isinstance(prompt, str):
            raise ValueError(
                "a conversation (a list of messages) can only be a prompt under the 'chat' "
                f"template; set the template to 'chat' (got {template!r})."
            )
        return template.replace(PLACEHOLDER, prompt)
    check(template, chat_template)
    return chat.render(
        chat_template,
        as_messages(prompt),
        add_generation_prompt=True,
        special_tokens=special_tokens,
    )


def encode_prompts(
    tokenizer,
    prompts: Sequence,
    template: str = "raw",
    *,
    bos_id: int | None = None,
    max_length: int | None = None,
    chat_template: str | None = None,
    special_tokens: Mapping[str, str] | None = None,
) -> list[list[int]]:
    """Token ids of each templated prompt.

    The rendered text is tokenized without special tokens; `bos_id`, when
    given, is put first unless the text already starts with it (a chat
    template that writes `{{ bos_token }}`), so a BOS is never doubled.
    `max_length` keeps each prompt's last tokens (the end, next to the
    response), the BOS staying first. `chat_template` and `special_tokens`
    (from `ram_jax.models.tokenizer_config`) are read by the `chat` template only.
    """
    texts = [
        render(template, p, chat_template=chat_template, special_tokens=special_tokens)
        for p in prompts
    ]
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    if bos_id is None and resolve(template) == CHAT and (special_tokens or {}).get("bos_token"):
        # A BOS the chat template writes stays first when the prompt is cut.
        written = tokenizer.token_to_id(special_tokens["bos_token"])
        if written is not None and all(e.ids[:1] == [written] for e in encoded):
            bos_id = written
    out = []
    for e in encoded:
        ids = list(e.ids)
        head = []
        if bos_id is not None:
            head = [int(bos_id)]
            if ids[:1] == head:
                ids = ids[1:]
        if max_length is not None:
            keep = max_length - len(head)
            if keep < 1:
                raise ValueError(f"max_length={max_length} leaves no room for a prompt token.")
            ids = ids[-keep:]
        out.append(head + ids)
    return out
