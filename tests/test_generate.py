"""`python -m ram_jax.generate` and `decoding.files`: end to end on tiny HF directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from ram_jax import generate
from ram_jax.data import templates
from ram_jax.decoding import driver, files, modes
from ram_jax.decoding import sampling as S
from ram_jax.models import convert
from ram_jax.models import tokenizer as T
from ram_jax.models.config import get_preset
from ram_jax.models.quantize import is_quantized
from ram_jax.models.tokenizer_config import load_tokenizer_config
from ram_jax.models.transformer import abstract_params
from ram_jax.training.model import load_model
from tests.hf_fixtures import random_params

FIXTURE_TOKENIZER = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer.json")
INSTRUCTIONS = ["Say hello.", "What is two plus two? Answer briefly.", "Name a colour."]
# The aligners pad their embedding (like Qwen2.5): rows 384..399 must never be sampled.
P_CONFIG = get_preset("tiny-llama", vocab_size=384, eos_token_ids=(0,))
Q_CONFIG = P_CONFIG.replace(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    tok = T.load_tokenizer(FIXTURE_TOKENIZER)
    for name, config, seed in (
        ("proposal", P_CONFIG, 1),
        ("aligner", Q_CONFIG, 2),
        ("aligner2", Q_CONFIG, 4),
    ):
        convert.save_hf(
            random_params(abstract_params(config), seed), config, str(root / name), tokenizer=tok
        )
    # An aligner as a training workdir: the CLI finds <workdir>/export.
    os.makedirs(root / "run")
    os.rename(root / "aligner", root / "run" / "export")
    with open(root / "prompts.jsonl", "w") as f:
        f.write("\n".join(json.dumps({"prompt": x}) for x in INSTRUCTIONS[:2]) + "\n")
        f.write(json.dumps({"instruction": INSTRUCTIONS[2], "id": 3}) + "\n")
    return root


def _parse(argv):
    generate.FLAGS.unparse_flags()
    generate.FLAGS(["generate", *argv])


def _library(dirs, mode, params, aligners, seed, chunk=16):
    """The same decode through the driver: one batch, no stream."""
    tok = T.load_tokenizer(FIXTURE_TOKENIZER)
    models = files.load_models(str(dirs / "proposal"), aligners, "float32", tok)
    prompts = templates.encode_prompts(tok, INSTRUCTIONS, "human_assistant")
    return driver.generate(
        models,
        prompts,
        mode,
        params,
        key=jax.random.key(seed),
        vocab_size=384,
        eos_ids=(0,),
        pad_id=0,
        chunk=chunk,
        tokenizer=tok,
    )


def test_cli_composes_aligners_and_equals_library_decode(dirs):
    out = dirs / "out.json"
    aligners = [str(dirs / "run"), str(dirs / "aligner2")]
    args = [
        f"--proposal={dirs / 'proposal'}",
        *[f"--aligner={a}" for a in aligners],
        "--aligner_weight=0.7",
        "--aligner_weight=1.5",
        f"--prompts={dirs / 'prompts.jsonl'}",
        "--template=human_assistant",
        f"--output={out}",
        "--mode=weighted_product",
        "--temperature=0.8",
        "--proposal_temperature=0.7",
        "--proposal_top_p=0.9",
        "--top_p=0.95",
        "--repetition_penalty=1.1",
        "--max_new_tokens=6",
        "--batch_size=2",
        "--chunk=2",
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
    assert {r["generator"] for r in records} == {
        "ram_jax-weighted_product-proposal+export+aligner2"
    }
    assert json.loads((dirs / "out.json.metrics.json").read_text()) == summary
    assert summary["num_prompts"] == 3 and not summary["timings_include_compile"]
    assert summary["ttft_seconds"] > 0 and summary["tokens_per_second"] > 0
    assert summary["sampling"]["aligner_weights"] == [0.7, 1.5]
    params = S.SamplingParams(
        temperature=0.8,
        proposal_temperature=0.7,
        proposal_top_p=0.9,
        top_p=0.95,
        repetition_penalty=1.1,
        max_new_tokens=6,
        aligner_weights=(0.7, 1.5),
        stop=("lo",),
    )
    lib = _library(dirs, "weighted_product", params, aligners, seed=3)
    assert [r["output"] for r in records] == lib.texts
    assert summary["generated_tokens"] == int(lib.lengths.sum())
    assert any(lib.texts), "all outputs empty: the comparison would be vacuous"


def test_killed_decode_resumes_to_the_output_of_one_run(dirs, tmp_path, monkeypatch):
    """A decode killed after its first batch continues from OUTPUT.partial: the file,
    texts and counts equal an uninterrupted run's; another job's partial is refused
    (naming what changed) until `restart`."""
    job = dict(
        proposal=str(dirs / "proposal"),
        aligners=[str(dirs / "run")],
        prompts=str(dirs / "prompts.jsonl"),
        mode=modes.get_mode("par_kl"),
        params=S.SamplingParams(max_new_tokens=5, kl_threshold=0.5),
        template="human_assistant",
        batch_size=2,
        seed=5,
        progress=False,
    )
    whole_texts, whole = files.decode_file(output=str(tmp_path / "whole.json"), **job)
    assert whole["resumed_prompts"] == 0 and any(whole_texts)
    out = tmp_path / "out.json"
    real, calls = driver.generate, []

    def killed_after_one_batch(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "generate", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        files.decode_file(output=str(out), **job)
    monkeypatch.undo()
    assert not out.exists() and os.path.exists(f"{out}.partial")
    with pytest.raises(ValueError, match=r"seed: 5 -> 6.*--restart"):
        files.decode_file(output=str(out), **{**job, "seed": 6})
    texts, metrics = files.decode_file(output=str(out), **job)
    assert metrics["resumed_prompts"] == 2 and texts == whole_texts
    assert out.read_text() == (tmp_path / "whole.json").read_text()
    assert not os.path.exists(f"{out}.partial")
    for key in ("generated_tokens", "aligner_branch_rate", "aligner_branch_rate_first_token"):
        assert metrics[key] == whole[key], key
    # A partial file of another job gives way to `restart`.
    monkeypatch.setattr(driver, "generate", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        files.decode_file(output=str(out), **job)
    monkeypatch.undo()
    _, metrics = files.decode_file(output=str(out), **{**job, "seed": 6}, restart=True)
    assert metrics["resumed_prompts"] == 0 and not os.path.exists(f"{out}.partial")


def test_stop_strings_end_rows_and_metrics_count_only_kept_tokens(dirs):
    """A stop string ends its row at a chunk boundary: the row is the unstopped row cut
    at the token that completed the stop, and every count and rate (tokens, the
    aligner-branch rates) covers only the kept tokens."""
    params = S.SamplingParams(
        temperature=1.5, proposal_top_p=0.95, kl_threshold=0.5, max_new_tokens=24
    )
    aligners = [str(dirs / "run")]
    free = _library(dirs, "par_kl", params, aligners, seed=1, chunk=3)
    stop = "e"
    hits = [t.find(stop) for t in free.texts]
    assert any(h >= 0 for h in hits), "no row would stop: the test would be vacuous"
    stopped = _library(dirs, "par_kl", params.replace(stop=(stop,)), aligners, seed=1, chunk=3)
    tok = T.load_tokenizer(FIXTURE_TOKENIZER)
    for i, h in enumerate(hits):
        n = stopped.lengths[i]
        np.testing.assert_array_equal(stopped.tokens[i, :n], free.tokens[i, :n])
        assert np.all(stopped.tokens[i, n:] == 0)
        if h < 0:
            assert stopped.texts[i] == free.texts[i] and n == free.lengths[i]
            continue
        assert stopped.texts[i] == free.texts[i][:h]
        assert stop in tok.decode(stopped.tokens[i, :n].tolist())
        assert stop not in tok.decode(stopped.tokens[i, : n - 1].tolist())
        assert stopped.finish_reasons[i] == "stop"
    metrics = stopped.metrics()
    assert metrics["generated_tokens"] == int(stopped.lengths.sum()) < free.lengths.sum()
    live = np.arange(24)[None] < stopped.lengths[:, None]
    assert 0 < metrics["aligner_branch_rate"] < 1, "both par_kl branches must occur"
    assert metrics["aligner_branch_rate"] == pytest.approx(stopped.aligner_branch[live].mean())
    assert metrics["aligner_branch_rate_first_token"] == pytest.approx(
        stopped.aligner_branch[:, 0].mean()
    )


def test_int8_proposal_decodes_with_quantized_proposal_weights_only(dirs, tmp_path):
    """`int8_proposal`: the proposal's weights are int8, the aligner's are not, and the
    decode is the driver's decode of exactly those models."""
    tok = T.load_tokenizer(FIXTURE_TOKENIZER)
    aligners = [str(dirs / "run")]
    models = files.load_models(str(dirs / "proposal"), aligners, "float32", tok, True)
    assert is_quantized(models.proposal[0]) and not is_quantized(models.aligners[0][0])
    params = S.SamplingParams(temperature=0.9, max_new_tokens=6)
    texts, metrics = files.decode_file(
        proposal=str(dirs / "proposal"),
        aligners=aligners,
        prompts=str(dirs / "prompts.jsonl"),
        output=str(tmp_path / "o.json"),
        mode=modes.get_mode("product"),
        params=params,
        template="human_assistant",
        dtype="float32",
        int8_proposal=True,
        batch_size=3,
        seed=2,
        progress=False,
    )
    assert metrics["int8_proposal"] is True
    prompts = templates.encode_prompts(tok, INSTRUCTIONS, "human_assistant")
    eos = T.pair_eos_ids(tok, P_CONFIG, [Q_CONFIG], load_tokenizer_config(FIXTURE_TOKENIZER, tok))
    same = driver.generate(
        models,
        prompts,
        "product",
        params,
        key=jax.random.key(2),
        vocab_size=384,
        eos_ids=eos,
        pad_id=eos[0],
        batch_size=3,
        tokenizer=tok,
    )
    assert texts == same.texts
    assert any(texts), "all outputs empty: the comparison would be vacuous"


def test_default_mode_uses_every_aligner_given():
    for aligners, want in (([], "proposal"), (["a"], "product"), (["a", "b"], "weighted_product")):
        _parse(["--proposal=x", "--output=y", *[f"--aligner={a}" for a in aligners]])
        assert generate.settings_from_flags()[0].name == want


def test_reference_preset_and_overrides():
    _parse(["--proposal=x", "--output=y", "--preset=reference", "--temperature=0.3"])
    mode, params, seq_sir = generate.settings_from_flags()
    assert params == S.REFERENCE.replace(temperature=0.3) and seq_sir is None
    assert mode == modes.ParKl()
    assert (params.kl_threshold, params.top_p, params.proposal_top_p) == (0.1, 0.9, 0.95)
    assert (params.repetition_penalty, params.filter_order) == (1.05, "top_p_first")
    assert (params.max_new_tokens, params.stop, params.rstrip) == (1024, ("\n\nHuman",), True)
    assert S.reference_sampling("qwen", "ultrachat").temperature == 0.3
    # The reference's par always has its EOS rule; a flag can turn it off.
    _parse(["--proposal=x", "--output=y", "--preset=reference", "--mode=par", "--seq_sir=4"])
    mode, _, seq_sir = generate.settings_from_flags()
    assert mode == modes.Par(eos_priority=True) and seq_sir.num_candidates == 4
    _parse(["--proposal=x", "--output=y", "--preset=reference", "--mode=par", "--noeos_priority"])
    assert generate.settings_from_flags()[0] == modes.Par(eos_priority=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top_p=1.5"], r"top_p=1.5 must lie in \(0, 1\]"),
        (["--aligner=a", "--aligner_weight=1", "--aligner_weight=2"], "2 --aligner_weight for 1"),
        (["--mode=par_kl", "--eos_priority"], r"takes no \['eos_priority'\]"),
        (["--aligner_weight=-1", "--aligner=a"], "aligner_weights=.* must be one finite"),
    ],
)
def test_bad_flags_rejected_before_loading(argv, message):
    _parse(["--proposal=/nonexistent", "--output=y", *argv])
    with pytest.raises(ValueError, match=message):
        generate.settings_from_flags()


def test_different_tokenizers_rejected_up_front(dirs, tmp_path):
    other = tmp_path / "other"
    config = Q_CONFIG.replace(vocab_size=300)
    tok = T.build_tokenizer(["a different corpus " * 50], vocab_size=290)
    convert.save_hf(random_params(abstract_params(config), 3), config, str(other), tokenizer=tok)
    with pytest.raises(ValueError, match="do not share one tokenizer"):
        files.decode_file(
            proposal=str(dirs / "proposal"),
            aligners=[str(dirs / "run"), str(other)],
            prompts=str(dirs / "prompts.jsonl"),
            output=str(tmp_path / "o.json"),
            mode=modes.get_mode("weighted_product"),
            params=S.SamplingParams(),
        )
    assert not (tmp_path / "o.json").exists()


def test_read_prompts_formats_and_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x"}, {"prompt": "y"}]))
    assert files.read_prompts(str(tmp_path / "a.json")) == ["x", "y"]
    (tmp_path / "b.jsonl").write_text('{"prompt": "x"}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: record has no string field"):
        files.read_prompts(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: invalid JSON"):
        files.read_prompts(str(tmp_path / "c.jsonl"))
    # A pretty-printed document: the error is reported on its own line, not line 1.
    (tmp_path / "d.jsonl").write_text('{\n  "prompt": "x",\n  "n": 1,\n  oops\n}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:4:3: invalid JSON"):
        files.read_prompts(str(tmp_path / "d.jsonl"))
    (tmp_path / "e.jsonl").write_bytes(b'{"prompt": "x"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"e\.jsonl:2: not UTF-8 text"):
        files.read_prompts(str(tmp_path / "e.jsonl"))
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
    run = lambda aligner: files.decode_file(
        proposal=str(tmp_path / "p"),
        aligners=[str(aligner)],
        prompts=str(tmp_path / "prompts.jsonl"),
        output=str(tmp_path / "out.json"),
        mode=modes.get_mode("product"),
        params=S.SamplingParams(max_new_tokens=3),
        template="chat",
        batch_size=2,
        progress=False,
    )
    with pytest.raises(ValueError, match="holds no tokenizer.json.*--assume_same_tokenizer"):
        run(no_tok)
    with caplog.at_level("INFO"):
        _, metrics = run(tmp_path / "q")
    assert (
        f"stopping on EOS ids ['{endoftext} <|endoftext|>', '{im_end} <|im_end|>']" in caplog.text
    )
    assert metrics["num_prompts"] == 2
    assert len(json.loads((tmp_path / "out.json").read_text())) == 2
