"""The HF files around a `tokenizer.json`: special tokens and the chat template.

A Hugging Face tokenizer is a directory. `tokenizer.json` decides which ids
a text becomes (its post-processor adds any BOS: `default_bos_id`);
`tokenizer_config.json` and `special_tokens_map.json` say which tokens are
BOS / EOS / PAD and hold the chat template (a `chat_template.jinja` file next
to them takes precedence, as in `transformers`). `load_tokenizer_config`
reads them (a bare `tokenizer.json`, e.g. one from `build_tokenizer`, gets its
special tokens from the vocabulary) and `write_tokenizer_files` writes them
into an export, copying the source files when there are any, so
`AutoTokenizer` reports the same EOS, PAD and chat template as the model was
trained with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Copied verbatim into an export when the tokenizer came from a directory.
COPIED_FILES = (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_FILE, CHAT_TEMPLATE_FILE)
SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
# Well-known special-token strings, for tokenizers that come without a config.
KNOWN_EOS = ("<|endoftext|>", "<|end_of_text|>")  # Qwen2.5 / build_tokenizer; Llama-3
KNOWN_BOS = ("<|begin_of_text|>", "<s>")  # Llama-3; SentencePiece-style models
KNOWN_PAD = ("<|pad|>",)  # build_tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """What an HF tokenizer directory says besides `tokenizer.json`.

    Attributes:
      bos_token, eos_token, pad_token, unk_token: special-token strings (None: unset).
      chat_template: the Jinja chat template, or None.
      directory: where these files were read (copied into exports); None for
        a tokenizer built in memory or a `tokenizer.json` without a config.
    """

    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    chat_template: str | None = None
    directory: str | None = None

    @property
    def special_tokens(self) -> dict[str, str]:
        """Set special tokens by name (`bos_token`: "<|begin_of_text|>", ...), for templates."""
        return {n: getattr(self, n) for n in SPECIAL_NAMES if getattr(self, n) is not None}

    def token_id(self, tok: Tokenizer, name: str) -> int | None:
        """The id of special token `name` ('eos_token', ...) in `tok`; None when unset."""
        text = getattr(self, name)
        if text is None:
            return None
        i = tok.token_to_id(text)
        if i is None:
            raise ValueError(
                f"{self.directory or 'tokenizer config'}: {name} {text!r} is not a token of "
                "tokenizer.json; the tokenizer files come from different models."
            )
        return i


def _content(value) -> str | None:
    """A special-token entry: a string, an AddedToken-style object or null."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: invalid JSON ({e}); restore the file from its source."
            ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}.")
    return value


def _chat_template(directory: str, config: dict) -> str | None:
    file = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(file):
        with open(file, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _guess(tok: Tokenizer, known: tuple[str, ...]) -> str | None:
    return next((t for t in known if tok.token_to_id(t) is not None), None)


def inferred_config(tok: Tokenizer) -> TokenizerConfig:
    """The config of a tokenizer without files (`build_tokenizer`): well-known token strings."""
    return TokenizerConfig(
        bos_token=_guess(tok, KNOWN_BOS),
        eos_token=_guess(tok, KNOWN_EOS),
        pad_token=_guess(tok, KNOWN_PAD),
    )


def load_tokenizer_config(path: str, tok: Tokenizer) -> TokenizerConfig:
    """Reads the files next to a `tokenizer.json` (`path`: that file or its directory).

    `tokenizer_config.json` wins over `special_tokens_map.json` for each
    token; without either file the special tokens are inferred from the
    vocabulary (`inferred_config`).
    """
    if os.path.isdir(path):
        directory = path
    elif os.path.basename(path) == TOKENIZER_FILE:
        directory = os.path.dirname(os.path.abspath(path))
    else:  # a tokenizer file under another name: its neighbours are not its metadata
        return inferred_config(tok)
    config = _read_json(os.path.join(directory, CONFIG_FILE))
    special = _read_json(os.path.join(directory, SPECIAL_TOKENS_FILE))
    if not config and not special:
        inferred = inferred_config(tok)
        return dataclasses.replace(inferred, chat_template=_chat_template(directory, {}))
    tokens = {}
    for name in SPECIAL_NAMES:
        value = config[name] if name in config else special.get(name)
        tokens[name] = _content(value)
    out = TokenizerConfig(
        **tokens,
        chat_template=_chat_template(directory, config),
        directory=directory,
    )
    for name in SPECIAL_NAMES:
        out.token_id(tok, name)  # every named token must exist
    return out


def default_bos_id(tok: Tokenizer) -> int | None:
    """The BOS `transformers`' `tokenizer(text)` puts first, or None when it adds none.

    For the fast tokenizers of these families `transformers` applies the
    post-processor of `tokenizer.json` (Llama-3's prepends `<|begin_of_text|>`;
    Qwen2.5's and `build_tokenizer`'s add nothing); an `add_bos_token` in
    `tokenizer_config.json` does not change it (tested against `transformers`).
    """
    probe = "a"
    plain = tok.encode(probe, add_special_tokens=False).ids
    full = tok.encode(probe, add_special_tokens=True).ids
    if len(full) > len(plain) and full[len(full) - len(plain) :] == plain:
        return full[0]
    return None


def write_tokenizer_files(
    directory: str,
    tok: Tokenizer,
    config: TokenizerConfig | None,
    *,
    eos_id: int,
    model_max_length: int,
) -> None:
    """Writes the tokenizer files of an export into `directory`.

    Files read from a directory (`config.directory`) are copied verbatim;
    otherwise `tokenizer.json` is saved and `tokenizer_config.json` /
    `special_tokens_map.json` are written with `eos_id` (the EOS the model
    was trained with) as `eos_token`, the config's other special tokens, and
    its chat template.
    """
    config = config or inferred_config(tok)
    if config.directory is not None:
        for name in COPIED_FILES:
            if os.path.isfile(os.path.join(config.directory, name)):
                shutil.copyfile(os.path.join(config.directory, name), os.path.join(directory, name))
        return
    tok.save(os.path.join(directory, TOKENIZER_FILE))
    eos = tok.id_to_token(eos_id)
    tokens = {**config.special_tokens, "eos_token": eos}
    tokens.setdefault("pad_token", eos)  # what `generate` pads with anyway
    written = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokens,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    if config.chat_template:
        written["chat_template"] = config.chat_template
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(written, f, indent=2, ensure_ascii=False)
    with open(os.path.join(directory, SPECIAL_TOKENS_FILE), "w", encoding="utf-8") as f:
        json.dump(tokens, f, indent=2, ensure_ascii=False)
