"""The `python -m ram_jax.generate` CLI: end to end on tiny HF directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from ram_jax import generate
from ram_jax.data import templates
from ram_jax.decoding import batching
from ram_jax.decoding import decoder as decode
from ram_jax.decoding import sampling as S
from ram_jax.models import convert
from ram_jax.models import tokenizer as T
from ram_jax.models.config import get_preset
from ram_jax.models.tokenizer_config import load_tokenizer_config
from ram_jax.models.transformer import abstract_params
from ram_jax.training.model import load_model
from tests.hf_fixtures import random_params

FIXTURE_TOKENIZER = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer.json")
INSTRUCTIONS = ["Say hello.", "What is two plus two? Answer briefly.", "Name a colour."]
# The aligner pads its embedding (like Qwen2.5): rows 384..399 must never be sampled.
P_CONFIG = get_preset("tiny-llama", vocab_size=384, eos_token_ids=(0,))
Q_CONFIG = P_CONFIG.replace(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    tok = T.load_tokenizer(FIXTURE_TOKENIZER)
    for name, config, seed in (("proposal", P_CONFIG, 1), ("aligner", Q_CONFIG, 2)):
        convert.save_hf(
            random_params(abstract_params(config), seed), config, str(root / name), tokenizer=tok
        )
    # The aligner as a training workdir: the CLI finds <workdir>/export.
    os.makedirs(root / "run")
    os.rename(root / "aligner", root / "run" / "export")
    with open(root / "prompts.jsonl", "w") as f:
        f.write("\n".join(json.dumps({"prompt": x}) for x in INSTRUCTIONS[:2]) + "\n")
        f.write(json.dumps({"instruction": INSTRUCTIONS[2], "id": 3}) + "\n")
    return root


def _parse(argv):
    generate.FLAGS.unparse_flags()
    generate.FLAGS(["generate", *argv])


def test_cli_end_to_end_equals_library_decode(dirs):
    out = dirs / "out.json"
    args = [
        f"--proposal={dirs / 'proposal'}",
        f"--aligner={dirs / 'run'}",
        f"--prompts={dirs / 'prompts.jsonl'}",
        "--template=human_assistant",
        f"--output={out}",
        "--mode=par_kl",
        "--temperature=0.8",
        "--proposal_temperature=0.7",
        "--top_p=0.9",
        "--repetition_penalty=1.1",
        "--kl_threshold=0.5",
        "--max_new_tokens=6",
        "--batch_size=2",
        "--seed=3",
        "--stop=lo",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "ram_jax.generate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    records = json.loads(out.read_text())
    assert [r["instruction"] for r in records] == INSTRUCTIONS
    assert {r["generator"] for r in records} == {"ram_jax-par_kl-proposal+export"}
    metrics = json.loads((dirs / "out.json.metrics.json").read_text())
    assert metrics == summary
    assert summary["num_prompts"] == 3 and not summary["timings_include_compile"]
    assert summary["ttft_seconds"] > 0 and summary["tokens_per_second"] > 0
    # The same decode through the library (no stream, one batch) gives the same texts.
    tok = T.load_tokenizer(FIXTURE_TOKENIZER)
    p_config, p_params = convert.load_hf(str(dirs / "proposal"))
    q_config, q_params = convert.load_hf(str(dirs / "run" / "export"))
    prompts = templates.encode_prompts(tok, INSTRUCTIONS, "human_assistant")
    sampling = S.SamplingConfig(
        mode="par_kl",
        temperature=0.8,
        proposal_temperature=0.7,
        top_p=0.9,
        repetition_penalty=1.1,
        kl_threshold=0.5,
    )
    lib = decode.generate(
        p_params,
        p_config,
        prompts,
        sampling,
        key=jax.random.key(3),
        max_new_tokens=6,
        vocab_size=384,
        q_params=q_params,
        q_config=q_config,
        eos_ids=(0,),
        pad_id=0,
    )
    assert summary["generated_tokens"] == int(lib["lengths"].sum())
    texts = batching.decode_texts(tok, lib["tokens"], lib["lengths"], (0,), ["lo"])
    assert [r["output"] for r in records] == texts
    assert any(texts), "all outputs empty: the comparison would be vacuous"


def test_reference_preset_and_overrides():
    _parse(["--proposal=x", "--output=y", "--preset=reference", "--temperature=0.3"])
    got = generate.sampling_from_flags()
    assert got == S.REFERENCE.replace(temperature=0.3)
    assert (got.mode, got.kl_threshold, got.top_p, got.proposal_top_p) == ("par_kl", 0.1, 0.9, 0.95)
    assert (got.repetition_penalty, got.filter_order) == (1.05, "top_p_first")
    assert S.reference_sampling("qwen", "ultrachat").temperature == 0.3


def test_bad_sampling_flag_rejected_before_loading():
    _parse(["--proposal=/nonexistent", "--output=y", "--top_p=1.5"])
    with pytest.raises(ValueError, match=r"top_p=1.5 must lie in \(0, 1\]"):
        generate.sampling_from_flags()


def test_different_tokenizers_rejected_up_front(dirs, tmp_path):
    other = tmp_path / "other"
    config = Q_CONFIG.replace(vocab_size=300)
    tok = T.build_tokenizer(["a different corpus " * 50], vocab_size=290)
    convert.save_hf(random_params(abstract_params(config), 3), config, str(other), tokenizer=tok)
    _parse(
        [
            f"--proposal={dirs / 'proposal'}",
            f"--aligner={other}",
            "--mode=par",
            f"--prompts={dirs / 'prompts.jsonl'}",
            f"--output={tmp_path / 'o.json'}",
        ]
    )
    with pytest.raises(ValueError, match="do not share one tokenizer"):
        generate.run(generate.sampling_from_flags())
    assert not (tmp_path / "o.json").exists()


def test_read_prompts_formats_and_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x"}, {"prompt": "y"}]))
    assert generate.read_prompts(str(tmp_path / "a.json")) == ["x", "y"]
    (tmp_path / "b.jsonl").write_text('{"prompt": "x"}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: record has no string field"):
        generate.read_prompts(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: invalid JSON"):
        generate.read_prompts(str(tmp_path / "c.jsonl"))
    # A pretty-printed document: the error is reported on its own line, not line 1.
    (tmp_path / "d.jsonl").write_text('{\n  "prompt": "x",\n  "n": 1,\n  oops\n}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:4:3: invalid JSON"):
        generate.read_prompts(str(tmp_path / "d.jsonl"))
    (tmp_path / "e.jsonl").write_bytes(b'{"prompt": "x"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"e\.jsonl:2: not UTF-8 text"):
        generate.read_prompts(str(tmp_path / "e.jsonl"))
    with pytest.raises(FileNotFoundError, match="neither an HF model directory"):
        load_model(str(tmp_path), "float32", "--aligner")


def test_instruct_aligner_on_a_base_proposal_with_the_chat_template(tmp_path, caplog):
    """--template=chat renders the tokenizer's own template; decoding stops on both models'
    EOS ids; --dtype defaults to the checkpoint's (bf16 stays bf16); an aligner directory
    without a tokenizer is refused unless --assume_same_tokenizer."""
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers")
    base_dir, instruct_dir = (
        os.path.join(fixtures, n) for n in ("qwen2.5-base", "qwen2.5-instruct")
    )
    tok = T.load_tokenizer(base_dir)
    endoftext, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    p_config = get_preset("tiny-qwen", vocab_size=512, num_layers=1, eos_token_ids=(endoftext,))
    q_config = p_config.replace(eos_token_ids=(im_end, endoftext), hidden_size=32)
    for name, config, source in (("p", p_config, base_dir), ("q", q_config, instruct_dir)):
        params = random_params(abstract_params(config), 5)
        tc = load_tokenizer_config(source, tok)
        convert.save_hf(
            params,
            config,
            str(tmp_path / name),
            dtype="bfloat16",
            tokenizer=tok,
            tokenizer_config=tc,
        )
    assert load_model(str(tmp_path / "p"))[0].param_dtype == "bfloat16"  # dtype="auto"
    no_tok = tmp_path / "q_no_tokenizer"
    shutil.copytree(tmp_path / "q", no_tok)
    os.remove(no_tok / "tokenizer.json")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Name a colour."}\n{"prompt": "Hi!"}\n')
    args = [
        f"--proposal={tmp_path / 'p'}",
        f"--prompts={tmp_path / 'prompts.jsonl'}",
        "--template=chat",
        "--mode=product",
        "--max_new_tokens=3",
        "--batch_size=2",
        f"--output={tmp_path / 'out.json'}",
    ]
    _parse([*args, f"--aligner={no_tok}"])
    with pytest.raises(ValueError, match="holds no tokenizer.json.*--assume_same_tokenizer"):
        generate.run(generate.sampling_from_flags())
    _parse([*args, f"--aligner={tmp_path / 'q'}"])
    with caplog.at_level("INFO"):
        metrics = generate.run(generate.sampling_from_flags())
    assert (
        f"stopping on EOS ids ['{endoftext} <|endoftext|>', '{im_end} <|im_end|>']" in caplog.text
    )
    assert metrics["num_prompts"] == 2
    assert len(json.loads((tmp_path / "out.json").read_text())) == 2
