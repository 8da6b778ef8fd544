"""Tokenizer building and loading, vocabulary sizes, and the ids of BOS and EOS."""

import json
import os
import shutil

import numpy as np
import pytest

from ram_jax.models.config import from_hf_config, get_preset
from ram_jax.models.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    bos_token_id,
    build_tokenizer,
    check_vocab_fits,
    eos_token_ids,
    load_tokenizer,
    pair_eos_ids,
    slice_vocab,
    tokenizer_length,
    training_eos_id,
)
from ram_jax.models.tokenizer_check import check_same_tokenizer
from ram_jax.models.tokenizer_config import load_tokenizer_config

TOKENIZERS = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers")

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


def test_check_vocab_fits(tok):
    check_vocab_fits(get_preset("tiny-qwen", vocab_size=300), tok)  # exactly fits
    check_vocab_fits(get_preset("tiny-qwen", vocab_size=320), tok)  # padded rows are fine
    with pytest.raises(ValueError, match=r"aligner: the tokenizer has 300 ids but .* only 299"):
        check_vocab_fits(get_preset("tiny-qwen", vocab_size=299), tok, "aligner")


def test_eos_token_ids(tok):
    assert eos_token_ids(tok) == (0,)
    # The config's ids win (from_hf_config reads generation_config.json, else config.json).
    assert eos_token_ids(tok, get_preset("tiny-qwen").replace(eos_token_ids=(1,))) == (1,)
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


def _files(name):
    path = os.path.join(TOKENIZERS, name)
    tok = load_tokenizer(path)
    return tok, load_tokenizer_config(path, tok)


def test_eos_from_the_tokenizer_files_and_the_pair_union(tmp_path):
    """generation_config.json, else config.json, else the tokenizer; P x Q stops on both."""
    tok, tc = _files("qwen2.5-instruct")
    endoftext, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    assert tc.eos_token == "<|im_end|>" and tc.pad_token == "<|endoftext|>"
    assert eos_token_ids(tok, None, tc) == (im_end,)  # the tokenizer's own eos_token
    # A Qwen2.5-3B-Instruct-like aligner: config.json says im_end, generation_config both.
    instruct = tmp_path / "instruct"
    instruct.mkdir()
    hf = get_preset("tiny-qwen", vocab_size=512).to_hf_dict()
    (instruct / "config.json").write_text(json.dumps({**hf, "eos_token_id": im_end}))
    shutil.copy(os.path.join(TOKENIZERS, "qwen2.5-instruct", "generation_config.json"), instruct)
    q_config = from_hf_config(str(instruct))
    assert q_config.eos_token_ids == (im_end, endoftext)
    # A base Qwen2.5-14B-like proposal stops only on <|endoftext|>.
    p_config = get_preset("tiny-qwen", vocab_size=512, eos_token_ids=(endoftext,))
    assert pair_eos_ids(tok, p_config, None, tc) == (endoftext,)
    assert pair_eos_ids(tok, p_config, q_config, tc) == (endoftext, im_end)
    # Training appends the tokenizer's eos_token (what transformers trainers append).
    assert training_eos_id(tok, p_config, tc) == im_end
    base_tok, base_tc = _files("qwen2.5-base")
    assert training_eos_id(base_tok, p_config, base_tc) == endoftext
