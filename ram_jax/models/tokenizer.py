"""Tokenizers: load `tokenizer.json`, build a small one offline, check vocabularies.

Only the `tokenizers` library is used (never `transformers`, which may import
torch). The proposal and the aligner must share one tokenizer: RAM multiplies
their next-token distributions id by id, so `check_same_tokenizer` runs before
any joint decoding.

Vocabulary sizes: a model's `config.vocab_size` counts embedding rows, which
may exceed the tokenizer (Qwen2.5-7B/14B: 152064 rows, 151665 token ids).
Rows at or beyond `tokenizer_length(tok)` belong to no token: the decoder
(`vocab_size`) and the losses (`vocab_limit`) cut logits to that length, so
they can never be sampled or enter a normaliser; `slice_vocab` does the same
for your own code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import jax
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ram_jax.models.config import ModelConfig

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# End-of-text strings of the supported base-model families (Qwen2.5, Llama-3).
_KNOWN_EOS = ("<|endoftext|>", "<|end_of_text|>")
# Begin-of-text strings (Llama-3; SentencePiece-style models). Qwen2.5 has none.
_KNOWN_BOS = ("<|begin_of_text|>", "<s>")


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


def _id_to_token(tok: Tokenizer) -> dict[int, str]:
    return {i: s for s, i in tok.get_vocab(with_added_tokens=True).items()}


def _special_tokens(tok: Tokenizer) -> dict[int, str]:
    return {i: t.content for i, t in tok.get_added_tokens_decoder().items() if t.special}


def _first_differences(a: dict[int, str], b: dict[int, str], limit: int = 5) -> list[str]:
    lines = []
    for i in sorted(set(a) | set(b)):
        if a.get(i) != b.get(i):
            lines.append(f"id {i}: {a.get(i, '<absent>')!r} vs {b.get(i, '<absent>')!r}")
            if len(lines) == limit:
                break
    return lines


def check_same_tokenizer(
    tok_a: Tokenizer, tok_b: Tokenizer, name_a: str = "proposal", name_b: str = "aligner"
) -> None:
    """Raises ValueError unless both tokenizers map text to the same ids.

    Compares the id -> token tables, the special tokens, and the rest of the
    pipeline (normalizer, pre-tokenizer, BPE merges, post-processor, decoder).
    The message shows the sizes, the first differing ids with their strings
    and the differing special tokens.
    """
    vocab_a, vocab_b = _id_to_token(tok_a), _id_to_token(tok_b)
    problems = []
    if vocab_a != vocab_b:
        problems.append(
            f"vocabularies differ: {name_a} has {len(vocab_a)} tokens "
            f"(length {tokenizer_length(tok_a)}), {name_b} has {len(vocab_b)} "
            f"(length {tokenizer_length(tok_b)}); first differing ids "
            f"({name_a} vs {name_b}): " + "; ".join(_first_differences(vocab_a, vocab_b))
        )
    special_a, special_b = _special_tokens(tok_a), _special_tokens(tok_b)
    if special_a != special_b:
        problems.append(
            f"special tokens differ ({name_a} vs {name_b}): "
            + "; ".join(_first_differences(special_a, special_b))
        )
    if not problems:
        json_a, json_b = json.loads(tok_a.to_str()), json.loads(tok_b.to_str())
        for section in ("normalizer", "pre_tokenizer", "model", "post_processor", "decoder"):
            if json_a.get(section) != json_b.get(section):
                problems.append(f"the tokenizers' {section!r} sections differ")
    if problems:
        raise ValueError(
            f"{name_a} and {name_b} do not share one tokenizer, so their next-token "
            "distributions cannot be combined id by id: "
            + " | ".join(problems)
            + ". Use an aligner from the proposal's model family with the same tokenizer.json."
        )


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


def bos_token_id(tok: Tokenizer, config: ModelConfig | None = None) -> int:
    """The id prompts start with when a BOS is asked for (`data.add_bos`, `--add_bos`).

    The config's `bos_token_id` (from `config.json`) if it is a token of this
    tokenizer, else the tokenizer's own begin-of-text token. Raises ValueError
    when there is none (Qwen2.5 models have no BOS).
    """
    length = tokenizer_length(tok)
    if config is not None and config.bos_token_id is not None:
        if not 0 <= config.bos_token_id < length:
            raise ValueError(
                f"config bos_token_id {config.bos_token_id} is not a token id of this tokenizer "
                f"(length {length}); the config and tokenizer.json come from different models."
            )
        return int(config.bos_token_id)
    for text in _KNOWN_BOS:
        i = tok.token_to_id(text)
        if i is not None:
            return i
    raise ValueError(
        f"a BOS token was asked for, but the config lists none and the tokenizer has none of "
        f"{list(_KNOWN_BOS)}; turn add_bos off (the reference adds no BOS)."
    )


def eos_token_ids(tok: Tokenizer, config: ModelConfig | None = None) -> tuple[int, ...]:
    """The token ids that end a response, for stopping decoding.

    The config's `eos_token_ids` (from `config.json`) come first, followed by
    whichever of the base-model end-of-text tokens `<|endoftext|>` (Qwen2.5,
    `build_tokenizer`) and `<|end_of_text|>` (Llama-3) the tokenizer has.
    Raises ValueError if there is none, or if a config id is not a token.
    """
    length = tokenizer_length(tok)
    ids = list(config.eos_token_ids) if config is not None else []
    for i in ids:
        if not 0 <= i < length:
            raise ValueError(
                f"config eos_token_id {i} is not a token id of this tokenizer (length {length}); "
                "the config and tokenizer.json come from different models."
            )
    for text in _KNOWN_EOS:
        i = tok.token_to_id(text)
        if i is not None and i not in ids:
            ids.append(i)
    if not ids:
        raise ValueError(
            f"no end-of-sequence token: the config lists none and the tokenizer has none of "
            f"{list(_KNOWN_EOS)}; add one (build_tokenizer(special_tokens=...)) or set "
            "eos_token_ids in the ModelConfig."
        )
    return tuple(ids)
