"""Tokenizers: load `tokenizer.json`, build a small one offline, the ids of BOS and EOS.

Only the `tokenizers` library is used (never `transformers`, which may import
torch). The HF files around `tokenizer.json` (special tokens, BOS rule, chat
template) are read by `ram_jax.models.tokenizer_config`; the proposal and the
aligner must share one tokenizer, which `ram_jax.models.tokenizer_check`
verifies before any joint decoding.

Vocabulary sizes: a model's `config.vocab_size` counts embedding rows, which
may exceed the tokenizer (Qwen2.5-7B/14B: 152064 rows, 151665 token ids).
Rows at or beyond `tokenizer_length(tok)` belong to no token: the decoder
(`vocab_size`) and the losses (`vocab_limit`) cut logits to that length, so
they can never be sampled or enter a normaliser; `slice_vocab` does the same
for your own code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import jax
from absl import logging
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ram_jax.models.config import ModelConfig
from ram_jax.models.tokenizer_config import (
    KNOWN_BOS,
    KNOWN_EOS,
    TokenizerConfig,
    default_bos_id,
    inferred_config,
)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def load_tokenizer(path: str) -> Tokenizer:
    """Loads `tokenizer.json`, or the one inside an HF model directory."""
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file}: no such tokenizer file; pass a tokenizer.json or a directory holding one "
            "(only the `tokenizers` JSON format is read, not sentencepiece .model files)."
        )
    return Tokenizer.from_file(file)


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = (EOS_TOKEN, PAD_TOKEN),
    min_frequency: int = 2,
) -> Tokenizer:
    """Trains a byte-level BPE tokenizer (GPT-2 / Qwen style) on `texts`, offline.

    Every byte is in the base alphabet, so any text round-trips through
    encode/decode. `special_tokens` get the first ids, in order (by default
    `<|endoftext|>` = 0 is the EOS, `<|pad|>` = 1 the padding id), and are never
    split by the pre-tokenizer. Training is deterministic for the same inputs.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{len(alphabet)} byte tokens + {len(special_tokens)} special tokens."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def tokenizer_length(tok: Tokenizer) -> int:
    """One past the largest token id, added tokens included (Qwen2.5: 151665).

    This is the number of logit columns that correspond to tokens; the rest of
    a padded embedding matrix is dropped by `slice_vocab`.
    """
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def slice_vocab(logits_xV: jax.Array, vocab_limit: int) -> jax.Array:
    """Drops padded vocabulary columns: `logits[..., :vocab_limit]`.

    Use `vocab_limit = tokenizer_length(tok)` on the logits of every model before
    sampling, products of distributions or log-softmax normalisers.
    """
    if vocab_limit > logits_xV.shape[-1]:
        raise ValueError(
            f"vocab_limit={vocab_limit} exceeds the logits' vocabulary {logits_xV.shape[-1]}; "
            "the tokenizer has ids the model has no embedding row for (see check_vocab_fits)."
        )
    return logits_xV[..., :vocab_limit]


def check_vocab_fits(config: ModelConfig, tok: Tokenizer, name: str = "model") -> None:
    """Raises ValueError if the tokenizer has ids beyond the model's embedding rows."""
    length = tokenizer_length(tok)
    if length > config.vocab_size:
        raise ValueError(
            f"{name}: the tokenizer has {length} ids but the model has only "
            f"{config.vocab_size} embedding rows (config vocab_size); ids >= "
            f"{config.vocab_size} would index past the embedding. Use the tokenizer that "
            "belongs to this checkpoint, or a config with vocab_size >= the tokenizer length."
        )


def bos_token_id(
    tok: Tokenizer,
    config: ModelConfig | None = None,
    tokenizer_config: TokenizerConfig | None = None,
) -> int:
    """The id prompts start with when a BOS is asked for (`data.add_bos`, `--add_bos`).

    The tokenizer's `bos_token` (`tokenizer_config.json`), else the config's
    `bos_token_id` (`config.json`) if it is a token of this tokenizer, else a
    well-known begin-of-text token. Raises ValueError when there is none
    (Qwen2.5 models have no BOS).
    """
    if tokenizer_config is not None and tokenizer_config.bos_token is not None:
        return tokenizer_config.token_id(tok, "bos_token")
    length = tokenizer_length(tok)
    if config is not None and config.bos_token_id is not None:
        if not 0 <= config.bos_token_id < length:
            raise ValueError(
                f"config bos_token_id {config.bos_token_id} is not a token id of this tokenizer "
                f"(length {length}); the config and tokenizer.json come from different models."
            )
        return int(config.bos_token_id)
    for text in KNOWN_BOS:
        i = tok.token_to_id(text)
        if i is not None:
            return i
    raise ValueError(
        f"a BOS token was asked for, but neither the tokenizer files nor the config name one and "
        f"the tokenizer has none of {list(KNOWN_BOS)}; turn add_bos off (the reference adds "
        "no BOS)."
    )


def prompt_bos_id(
    tok: Tokenizer,
    tokenizer_config: TokenizerConfig,
    add_bos: bool | None,
    template: str,
    config: ModelConfig | None = None,
) -> int | None:
    """The BOS every prompt starts with (`encode_prompts(bos_id=...)`), or None.

    `add_bos` None follows the tokenizer as `transformers` does
    (`default_bos_id`: its post-processor's BOS), except under
    the `chat` template, whose text holds any BOS it wants (`{{ bos_token }}`);
    True forces the tokenizer's BOS (`bos_token_id`), False leaves it out.
    """
    if add_bos is None:
        return None if template == "chat" else default_bos_id(tok)
    return bos_token_id(tok, config, tokenizer_config) if add_bos else None


def eos_token_ids(
    tok: Tokenizer,
    config: ModelConfig | None = None,
    tokenizer_config: TokenizerConfig | None = None,
) -> tuple[int, ...]:
    """The token ids that end a model's response, for stopping decoding.

    The config's `eos_token_ids` when it has any (`from_hf_config` reads them
    from `generation_config.json`, else `config.json`); otherwise the
    tokenizer's: its `eos_token` (`tokenizer_config.json`), else whichever of
    the base-model end-of-text tokens `<|endoftext|>` (Qwen2.5,
    `build_tokenizer`) and `<|end_of_text|>` (Llama-3) it has. Raises
    ValueError if there is none, or if a config id is not a token.
    """
    length = tokenizer_length(tok)
    ids = list(config.eos_token_ids) if config is not None else []
    for i in ids:
        if not 0 <= i < length:
            raise ValueError(
                f"config eos_token_id {i} is not a token id of this tokenizer (length {length}); "
                "the config and tokenizer.json come from different models."
            )
    if ids:
        return tuple(ids)
    tokenizer_config = tokenizer_config or inferred_config(tok)
    eos = tokenizer_config.token_id(tok, "eos_token")
    if eos is None:
        raise ValueError(
            f"no end-of-sequence token: the config lists none, the tokenizer files name none and "
            f"the tokenizer has none of {list(KNOWN_EOS)}; add one (build_tokenizer("
            "special_tokens=...)) or set eos_token_ids in the ModelConfig."
        )
    return (eos,)


def training_eos_id(
    tok: Tokenizer, config: ModelConfig, tokenizer_config: TokenizerConfig | None = None
) -> int:
    """The EOS appended to every training response.

    The tokenizer's `eos_token` when its files name one (what `transformers`
    trainers append: `<|eot_id|>` for Llama-3 Instruct, `<|im_end|>` for
    Qwen2.5 Instruct, the end-of-text token for base models), else the
    model's first EOS id.
    """
    if tokenizer_config is not None and tokenizer_config.eos_token is not None:
        return tokenizer_config.token_id(tok, "eos_token")
    return eos_token_ids(tok, config, tokenizer_config)[0]


def pair_eos_ids(
    tok: Tokenizer,
    p_config: ModelConfig,
    q_configs: ModelConfig | Sequence[ModelConfig] | None = None,
    tokenizer_config: TokenizerConfig | None = None,
) -> tuple[int, ...]:
    """The ids that stop decoding of a proposal with its aligners: every model's EOS ids.

    An aligner tuned from an Instruct model ends its answers with its own EOS
    (Qwen2.5 Instruct: `<|im_end|>`), which a base proposal does not stop on;
    decoding stops at any model's EOS. The union is logged.
    """
    p_ids = eos_token_ids(tok, p_config, tokenizer_config)
    if isinstance(q_configs, ModelConfig):
        q_configs = (q_configs,)
    if not q_configs:
        return p_ids
    q_ids = tuple(i for config in q_configs for i in eos_token_ids(tok, config, tokenizer_config))
    ids = tuple(dict.fromkeys(p_ids + q_ids))
    name = lambda i: tok.id_to_token(i)
    logging.info(
        "stopping on EOS ids %s: the proposal's %s and the aligners' %s",
        [f"{i} {name(i)}" for i in ids],
        list(p_ids),
        list(q_ids),
    )
    return ids
