"""Do two tokenizers mean the same text by every id? The check before P and Q are combined.

RAM multiplies the proposal's and the aligner's next-token distributions id
by id, so both must map text to the same ids and ids to the same text.
`check_same_tokenizer` compares what decides that, not the JSON: the
vocabulary (id -> token) and the BPE merges, the model options that change
segmentation (a `null` and an empty string are the same option), the added
tokens by id, and, on a set of probe texts, the normalizer's output, the
pre-tokenizer's split and the final ids. Special tokens whose names differ at
the same id (Llama-3.0's `<|reserved_special_token_2|>` is Llama-3.1's
`<|finetune_right_pad_id|>`) only warn: no text produces them. A model
directory without a tokenizer is refused unless the caller says the
tokenizers are the same (`check_model_tokenizers(..., assume_same=True)`).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Mapping

from absl import logging
from tokenizers import Tokenizer

# Texts on which tokenizer pipelines tend to differ: whitespace runs, digit
# groups, contractions, case, composed / decomposed accents, compatibility
# characters, CJK, emoji, code and the chat-format markers.
PROBES = (
    "Hello world! How are you?",
    "  leading spaces\tand\ttabs\n\nnew lines\r\n  trailing  ",
    "Numbers: 1 22 333 4444 55555 3.14159 1,000,000 2024-07-26",
    "I'm sure they'll say we've done what you'd've done; it's JOHN's.",
    "café naïve façade " + unicodedata.normalize("NFD", "café naïve façade"),
    "ﬁ ﬂ ① ＡＢＣ ｶﾀｶﾅ Ⅻ ² ½ µ Å",
    "日本語のテキスト、中文文本。한국어 텍스트 Ελληνικά русский עברית العربية",
    "emoji 🙂👍🏽 👨‍👩‍👧 ✨ and symbols ©®™ §¶ •…—–",
    "def f(x):\n    return {'a': [1, 2], \"b\": None}  # comment\n",
    "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
    '<html><body class="x">&amp; &lt;tag&gt;</body></html>',
    "",
)


def _added(tok: Tokenizer) -> dict[int, object]:
    return dict(tok.get_added_tokens_decoder())


def _vocab(tok: Tokenizer, skip: set[int]) -> dict[int, str]:
    return {i: s for s, i in tok.get_vocab(with_added_tokens=True).items() if i not in skip}


def _first_differences(a: dict, b: dict, limit: int = 5) -> list[str]:
    lines = []
    for i in sorted(set(a) | set(b)):
        if a.get(i) != b.get(i):
            lines.append(f"id {i}: {a.get(i, '<absent>')!r} vs {b.get(i, '<absent>')!r}")
            if len(lines) == limit:
                break
    return lines


def _model(tok: Tokenizer) -> dict:
    return json.loads(tok.to_str()).get("model") or {}


def _merges(model: dict) -> list[tuple[str, ...]]:
    # Older files write a merge as "a b", newer ones as ["a", "b"].
    return [
        tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])
    ]


def _options(model: dict) -> dict:
    # null, "" and false configure the same behaviour (no prefix, no dropout, ...).
    return {k: (v or None) for k, v in model.items() if k not in ("vocab", "merges")}


def _from_first_difference(a: list, b: list, width: int = 4) -> str:
    k = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"from piece {k}: {a[k : k + width]} vs {b[k : k + width]}"


def _pipeline_difference(tok_a: Tokenizer, tok_b: Tokenizer, text: str) -> str | None:
    """Which stage first treats `text` differently, or None if both give the same ids."""
    norm_a = tok_a.normalizer.normalize_str(text) if tok_a.normalizer else text
    norm_b = tok_b.normalizer.normalize_str(text) if tok_b.normalizer else text
    if norm_a != norm_b:
        # ascii() shows what differs (composed vs decomposed accents look alike).
        return f"the normalizers differ: {ascii(text)} becomes {ascii(norm_a)} vs {ascii(norm_b)}"

    def split(tok):
        if tok.pre_tokenizer is None:
            return [norm_a]
        return [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(norm_a)]

    pieces_a, pieces_b = split(tok_a), split(tok_b)
    if pieces_a != pieces_b:
        return f"the pre-tokenizers split {text!r} differently, " + _from_first_difference(
            pieces_a, pieces_b
        )
    ids_a = tok_a.encode(text, add_special_tokens=False).ids
    ids_b = tok_b.encode(text, add_special_tokens=False).ids
    if ids_a != ids_b:
        return f"{text!r} becomes different ids, " + _from_first_difference(ids_a, ids_b)
    return None


def check_same_tokenizer(
    tok_a: Tokenizer, tok_b: Tokenizer, name_a: str = "proposal", name_b: str = "aligner"
) -> list[str]:
    """Raises ValueError unless both tokenizers map every text to the same ids.

    Returns (and logs) the warnings: special tokens named differently at the
    same id, and a different choice of special tokens around a text (BOS),
    which ram_jax does not use since prompts are encoded once. The error
    names each difference: the sizes and first differing ids, the first
    differing merge, the differing model option with both values, or the
    probe text a normalizer or pre-tokenizer treats differently.
    """
    problems, warnings = [], []
    added_a, added_b = _added(tok_a), _added(tok_b)
    special = {i for i in set(added_a) & set(added_b) if added_a[i].special and added_b[i].special}
    renamed = {i for i in special if added_a[i].content != added_b[i].content}
    if renamed:
        warnings.append(
            f"{name_a} and {name_b} name {len(renamed)} special token(s) differently at the same "
            f"id ({name_a} vs {name_b}): "
            + "; ".join(
                f"id {i}: {added_a[i].content!r} vs {added_b[i].content!r}"
                for i in sorted(renamed)[:5]
            )
        )
    vocab_a, vocab_b = _vocab(tok_a, special), _vocab(tok_b, special)
    if vocab_a != vocab_b:
        length = lambda tok: max(tok.get_vocab(with_added_tokens=True).values()) + 1
        problems.append(
            f"vocabularies differ: {name_a} has {tok_a.get_vocab_size(with_added_tokens=True)} "
            f"tokens (length {length(tok_a)}), {name_b} has "
            f"{tok_b.get_vocab_size(with_added_tokens=True)} (length {length(tok_b)}); first "
            f"differing ids ({name_a} vs {name_b}): "
            + "; ".join(_first_differences(vocab_a, vocab_b))
        )
    flags = lambda t: (t.special, t.lstrip, t.rstrip, t.single_word, t.normalized)
    odd = sorted(
        i for i in set(added_a) & set(added_b) - renamed if flags(added_a[i]) != flags(added_b[i])
    )
    if odd:
        i = odd[0]
        problems.append(
            f"added token {added_a[i].content!r} (id {i}) is matched differently: (special, "
            f"lstrip, rstrip, single_word, normalized) {flags(added_a[i])} vs {flags(added_b[i])}"
        )
    model_a, model_b = _model(tok_a), _model(tok_b)
    merges_a, merges_b = _merges(model_a), _merges(model_b)
    if merges_a != merges_b:
        rank = next(
            (r for r, (x, y) in enumerate(zip(merges_a, merges_b, strict=False)) if x != y),
            min(len(merges_a), len(merges_b)),
        )
        at = lambda m: m[rank] if rank < len(m) else "<none>"
        problems.append(
            f"BPE merges differ: {name_a} has {len(merges_a)}, {name_b} {len(merges_b)}; first "
            f"difference at rank {rank}: {at(merges_a)} vs {at(merges_b)}"
        )
    options_a, options_b = _options(model_a), _options(model_b)
    for key in sorted(set(options_a) | set(options_b)):
        if options_a.get(key) != options_b.get(key):
            problems.append(
                f"tokenizer model option {key!r} differs: {model_a.get(key)!r} vs "
                f"{model_b.get(key)!r}"
            )
    if not problems:
        shared = [added_a[i].content for i in sorted(set(added_a) & set(added_b) - renamed)]
        probes = PROBES + ("".join(f"x {s} y" for s in shared),)
        for text in probes:
            difference = _pipeline_difference(tok_a, tok_b, text)
            if difference:
                problems.append(difference)
                break
        for text in probes[:1]:
            with_a = tok_a.encode(text, add_special_tokens=True).ids
            with_b = tok_b.encode(text, add_special_tokens=True).ids
            if with_a != with_b:
                warnings.append(
                    f"{name_a} and {name_b} add different special tokens to a text ({text!r}: "
                    f"{with_a} vs {with_b}); ram_jax encodes prompts once, for both models, "
                    "with the BOS rule of the proposal's tokenizer (--add_bos)."
                )
    if problems:
        raise ValueError(
            f"{name_a} and {name_b} do not share one tokenizer, so their next-token "
            "distributions cannot be combined id by id: "
            + " | ".join(problems)
            + ". Use an aligner from the proposal's model family with the same tokenizer.json."
        )
    for w in warnings:
        logging.warning("%s", w)
    return warnings


def check_model_tokenizers(
    tok: Tokenizer,
    dirs: Mapping[str, str],
    *,
    assume_same: bool = False,
    reference: str = "proposal",
    override: str = "--assume_same_tokenizer",
) -> list[str]:
    """Checks that the tokenizer in each model directory matches `tok`; returns the warnings.

    Args:
      tok: the tokenizer prompts are encoded with (usually the proposal's).
      dirs: model name -> its directory, e.g. {"aligner": q_dir}.
      assume_same: skip directories that hold no `tokenizer.json` instead of
        refusing them (the caller vouches that the ids mean the same text).
      reference: the name of `tok` in messages.
      override: how the caller's user sets `assume_same`, for the message.
    """
    warnings = []
    for name, directory in dirs.items():
        file = os.path.join(directory, "tokenizer.json")
        if os.path.isfile(file):
            warnings += check_same_tokenizer(tok, Tokenizer.from_file(file), reference, name)
        elif assume_same:
            logging.warning(
                "%s %s holds no tokenizer.json; assuming it shares the %s's tokenizer (%s).",
                name,
                directory,
                reference,
                override,
            )
        else:
            raise ValueError(
                f"{name} {directory} holds no tokenizer.json, so ram_jax cannot check that its "
                f"ids mean the same text as the {reference}'s. Copy the tokenizer files of the "
                f"model it was trained from into it (ram_jax exports include them), or pass "
                f"{override} if you are sure it shares the {reference}'s tokenizer."
            )
    return warnings
