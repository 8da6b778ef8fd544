"""Tokenizer building, loading and the shared-vocabulary checks."""

import json

import numpy as np
import pytest

from ram_jax.models.config import get_preset
from ram_jax.models.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    bos_token_id,
    build_tokenizer,
    check_same_tokenizer,
    check_vocab_fits,
    eos_token_ids,
    load_tokenizer,
    slice_vocab,
    tokenizer_length,
)

TEXTS = [
    "\n\nHuman: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
    "\n\nHuman: Summarise this post.\n\nAssistant: The author asks how to learn to cook.",
    "The quick brown fox jumps over the lazy dog; the dog does not mind at all.",
] * 10


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(TEXTS, vocab_size=300)


def test_build_round_trips_and_has_special_tokens(tok):
    assert tokenizer_length(tok) == 300
    assert tok.token_to_id(EOS_TOKEN) == 0 and tok.token_to_id(PAD_TOKEN) == 1
    for text in [TEXTS[0], "ünïcödé 🙂 and unseen wörds\t\n", " leading space", ""]:
        ids = tok.encode(text).ids
        assert max(ids, default=0) < 300
        assert tok.decode(ids) == text
    # Merges were learned: common text takes fewer tokens than its bytes.
    assert len(tok.encode(TEXTS[0]).ids) < len(TEXTS[0].encode()) / 2
    # Special tokens stay whole, and training is deterministic.
    assert tok.encode(f"Paris.{EOS_TOKEN}").ids[-1] == 0
    assert build_tokenizer(TEXTS, vocab_size=300).to_str() == tok.to_str()
    with pytest.raises(ValueError, match="vocab_size=200 is too small"):
        build_tokenizer(TEXTS, vocab_size=200)


def test_load_from_file_and_directory(tok, tmp_path):
    tok.save(str(tmp_path / "tokenizer.json"))
    for source in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = load_tokenizer(str(source))
        assert loaded.encode(TEXTS[1]).ids == tok.encode(TEXTS[1]).ids
        check_same_tokenizer(loaded, tok)
    with pytest.raises(FileNotFoundError, match=r"empty/tokenizer\.json: no such tokenizer"):
        (tmp_path / "empty").mkdir()
        load_tokenizer(str(tmp_path / "empty"))


def test_check_same_tokenizer_names_differing_ids(tok):
    other = build_tokenizer(TEXTS[:2], vocab_size=290)
    a, b = tok.get_vocab(), other.get_vocab()
    first = min(i for s, i in a.items() if b.get(s) != i)
    token_a = next(s for s, i in a.items() if i == first)
    with pytest.raises(ValueError) as err:
        check_same_tokenizer(tok, other, "proposal P", "aligner Q")
    message = str(err.value)
    assert "proposal P has 300 tokens" in message and "aligner Q has 290" in message
    assert f"id {first}: {token_a!r}" in message


def test_check_same_tokenizer_sees_special_tokens_and_merges(tok):
    renamed = json.loads(tok.to_str())
    renamed["added_tokens"][1]["content"] = "<|padding|>"
    renamed["model"]["vocab"]["<|padding|>"] = renamed["model"]["vocab"].pop(PAD_TOKEN)
    with pytest.raises(
        ValueError, match=r"special tokens differ.*id 1: '<\|pad\|>' vs '<\|padding"
    ):
        check_same_tokenizer(tok, type(tok).from_str(json.dumps(renamed)))
    # Same vocabulary, one BPE merge dropped: texts would split differently.
    fewer_merges = json.loads(tok.to_str())
    fewer_merges["model"]["merges"].pop(0)
    with pytest.raises(ValueError, match="'model' sections differ"):
        check_same_tokenizer(tok, type(tok).from_str(json.dumps(fewer_merges)))


def test_check_vocab_fits(tok):
    check_vocab_fits(get_preset("tiny-qwen", vocab_size=300), tok)  # exactly fits
    check_vocab_fits(get_preset("tiny-qwen", vocab_size=320), tok)  # padded rows are fine
    with pytest.raises(ValueError, match=r"aligner: the tokenizer has 300 ids but .* only 299"):
        check_vocab_fits(get_preset("tiny-qwen", vocab_size=299), tok, "aligner")


def test_eos_token_ids(tok):
    assert eos_token_ids(tok) == (0,)
    assert eos_token_ids(tok, get_preset("tiny-qwen").replace(eos_token_ids=(1,))) == (1, 0)
    with pytest.raises(ValueError, match="eos_token_id 151643 is not a token id"):
        eos_token_ids(tok, get_preset("qwen2.5-0.5b"))
    no_eos = build_tokenizer(TEXTS, vocab_size=300, special_tokens=(PAD_TOKEN,))
    with pytest.raises(ValueError, match="no end-of-sequence token"):
        eos_token_ids(no_eos)


def test_bos_token_id(tok):
    with_bos = build_tokenizer(
        TEXTS, vocab_size=300, special_tokens=(EOS_TOKEN, "<|begin_of_text|>")
    )
    assert bos_token_id(with_bos) == 1
    assert bos_token_id(with_bos, get_preset("tiny-llama").replace(bos_token_id=0)) == 0
    with pytest.raises(ValueError, match="turn add_bos off"):
        bos_token_id(tok)  # Qwen-style: no BOS at all
    with pytest.raises(ValueError, match="bos_token_id 128000 is not a token id"):
        bos_token_id(tok, get_preset("llama-3.2-1b"))


def test_slice_vocab():
    logits = np.arange(2 * 3 * 10, dtype=np.float32).reshape(2, 3, 10)
    np.testing.assert_array_equal(slice_vocab(logits, 7), logits[..., :7])
    with pytest.raises(ValueError, match="vocab_limit=11 exceeds"):
        slice_vocab(logits, 11)
