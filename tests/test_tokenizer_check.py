"""The shared-tokenizer check: it compares what decides ids, names each difference, and
refuses a model directory it cannot check unless told to assume."""

import json
import os
import shutil
import unicodedata

import pytest
from tokenizers import Tokenizer

from ram_jax.models.tokenizer import PAD_TOKEN, build_tokenizer
from ram_jax.models.tokenizer_check import check_model_tokenizers, check_same_tokenizer

TOKENIZERS = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers")
LLAMA = os.path.join(TOKENIZERS, "llama3-instruct", "tokenizer.json")
QWEN = os.path.join(TOKENIZERS, "qwen2.5-instruct", "tokenizer.json")


def _spec(path=LLAMA) -> dict:
    with open(path) as f:
        return json.load(f)


def _tok(spec: dict) -> Tokenizer:
    return Tokenizer.from_str(json.dumps(spec))


def _refused(a, b) -> str:
    with pytest.raises(ValueError, match="do not share one tokenizer") as e:
        check_same_tokenizer(a, b, "proposal P", "aligner Q")
    return str(e.value)


@pytest.fixture(scope="module")
def llama():
    return Tokenizer.from_file(LLAMA)


def test_renamed_special_tokens_and_empty_options_only_warn(llama):
    """Llama-3.0-Instruct vs Llama-3.2: equal ids for every text, two special names differ."""
    spec = _spec()
    renames = {"<|finetune_right_pad_id|>": "<|reserved_special_token_2|>"}
    renames["<|reserved_special_token_2|>"] = "<|reserved_special_token_3|>"
    for token in spec["added_tokens"]:
        token["content"] = renames.get(token["content"], token["content"])
    spec["model"]["continuing_subword_prefix"] = ""  # null in the other file
    spec["model"]["end_of_word_suffix"] = ""
    older = _tok(spec)
    warnings = check_same_tokenizer(llama, older, "llama-3.2", "llama-3.0")
    pad = llama.token_to_id("<|finetune_right_pad_id|>")
    assert len(warnings) == 1
    assert (
        f"id {pad}: '<|finetune_right_pad_id|>' vs '<|reserved_special_token_2|>'" in (warnings[0])
    )
    for text in ("Hello world! 12345", "\n\nHuman: hi\n\nAssistant: "):
        assert llama.encode(text).ids == older.encode(text).ids  # why it is only a warning


def test_each_difference_that_changes_ids_is_named(llama):
    qwen = Tokenizer.from_file(QWEN)
    message = _refused(llama, qwen)
    assert "vocabularies differ: proposal P has 527 tokens" in message
    assert "aligner Q has 511" in message and "BPE merges differ" in message
    assert "'ignore_merges' differs: True vs False" in message

    spec = _spec()
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    assert "BPE merges differ: proposal P has 260, aligner Q 259" in _refused(llama, _tok(spec))

    spec = _spec()
    spec["normalizer"] = {"type": "NFC"}
    message = _refused(llama, _tok(spec))
    decomposed = unicodedata.normalize("NFD", "café")
    assert "the normalizers differ" in message and ascii(decomposed)[1:-1] in message

    spec = _spec()  # Qwen2.5 splits digits one by one, Llama-3 in groups of three
    split = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace(r"\p{N}{1,3}", r"\p{N}")
    message = _refused(llama, _tok(spec))
    assert "the pre-tokenizers split 'Numbers: 1 22 333" in message
    assert "['22', 'Ġ', '333', 'Ġ'] vs ['2', '2', 'Ġ', '3']" in message

    spec = _spec()  # an added token that swallows the spaces around it
    spec["added_tokens"][6]["lstrip"] = True
    message = _refused(llama, _tok(spec))
    assert "added token '<|start_header_id|>'" in message and "matched differently" in message


def test_differing_bos_rules_warn(llama):
    spec = _spec()
    spec["post_processor"] = spec["post_processor"]["processors"][0]  # no BOS template
    (warning,) = check_same_tokenizer(llama, _tok(spec))
    assert "add different special tokens" in warning and "--add_bos" in warning


def test_build_tokenizer_special_names_warn():
    texts = ["the quick brown fox jumps over the lazy dog"] * 20
    tok = build_tokenizer(texts, vocab_size=300)
    spec = json.loads(tok.to_str())
    spec["added_tokens"][1]["content"] = "<|padding|>"
    spec["model"]["vocab"]["<|padding|>"] = spec["model"]["vocab"].pop(PAD_TOKEN)
    (warning,) = check_same_tokenizer(tok, _tok(spec))
    assert "id 1: '<|pad|>' vs '<|padding|>'" in warning


def test_directory_without_tokenizer_is_refused_unless_assumed(llama, tmp_path):
    with_tok, without = tmp_path / "with", tmp_path / "without"
    with_tok.mkdir()
    without.mkdir()
    shutil.copy(LLAMA, with_tok)
    assert check_model_tokenizers(llama, {"aligner": str(with_tok)}) == []
    with pytest.raises(ValueError, match="holds no tokenizer.json") as e:
        check_model_tokenizers(llama, {"aligner": str(without)})
    assert "pass --assume_same_tokenizer" in str(e.value)
    assert check_model_tokenizers(llama, {"aligner": str(without)}, assume_same=True) == []
    shutil.copy(QWEN, without)
    with pytest.raises(ValueError, match="proposal and aligner do not share"):
        check_model_tokenizers(llama, {"aligner": str(without)}, assume_same=True)
