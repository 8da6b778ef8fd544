"""Proposal-sample synthesis: K samples per row, input rows preserved, exact and safe resume."""

import json
import os
import random

import jax
import pytest

from ram_jax import resumable, sample_proposal
from ram_jax.data import read_rows
from ram_jax.decoding import driver
from ram_jax.decoding.sampling import SamplingParams
from ram_jax.io import DataError
from ram_jax.models.config import get_preset
from ram_jax.models.convert import save_hf
from ram_jax.models.quantize import is_quantized
from ram_jax.models.tokenizer import load_tokenizer
from ram_jax.models.transformer import init_params
from ram_jax.training.model import load_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SAMPLING = SamplingParams(temperature=1.0, repetition_penalty=1.05)


@pytest.fixture(scope="module")
def proposal(tmp_path_factory):
    config = get_preset("tiny-llama", vocab_size=384, num_layers=1)
    path = str(tmp_path_factory.mktemp("proposal"))
    save_hf(jax.jit(init_params, static_argnums=0)(config, jax.random.key(3)), config, path)
    return load_model(path, "float32")


def _rows():
    lines = open(os.path.join(FIXTURES, "smoke_eval.jsonl")).read().splitlines()[:5]
    rows = [{**json.loads(x), "id": i} for i, x in enumerate(lines)]
    for r in rows:
        del r["sampling"]  # the fixture already has samples; these rows must get new ones
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("in") / "rows.jsonl", _rows())


@pytest.fixture(scope="module")
def full(proposal, rows_file, tmp_path_factory):
    """An uninterrupted run's output."""
    out = str(tmp_path_factory.mktemp("full") / "full.jsonl")
    assert _sample(proposal, rows_file, out) == 5
    return out


def _sample(proposal, rows_file, out, restart=False, int8_proposal=False, **changes):
    config, params = proposal
    settings = dict(num_samples=2, max_new_tokens=6, batch_size=2, seed=1)
    settings.update(changes)
    return sample_proposal.sample_file(
        rows_file,
        out,
        p_params=params,
        p_config=config,
        tokenizer=load_tokenizer(os.path.join(FIXTURES, "tokenizer.json")),
        sampling=SAMPLING,
        settings=sample_proposal.Settings(**settings),
        restart=restart,
        int8_proposal=int8_proposal,
    )


def test_k_samples_per_row(full, rows_file):
    out = [json.loads(x) for x in open(full)]
    inp = [json.loads(x) for x in open(rows_file)]
    assert [r["id"] for r in out] == list(range(5))
    for o, i in zip(out, inp, strict=True):
        assert {k: v for k, v in o.items() if k != "sampling"} == i
        assert len(o["sampling"]) == 2 and all(isinstance(s, str) for s in o["sampling"])
    assert len({s for o in out for s in o["sampling"]}) > 5  # samples differ
    # The output is valid training data for ram_mc with K = 2.
    assert len(read_rows(full, need=("sampling",))[0].sampling) == 2


def _interrupted(proposal, rows_file, out, monkeypatch):
    """A run stopped during its second batch, its last partial line cut off (a kill mid-write)."""
    calls = []
    real = driver.generate

    def generate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "generate", generate_then_die)
    with pytest.raises(KeyboardInterrupt):
        _sample(proposal, rows_file, out)
    monkeypatch.setattr(driver, "generate", real)
    with open(out + ".partial", "a") as f:
        f.write('{"trunc')


def test_interrupted_run_resumes_to_the_uninterrupted_output(
    proposal, rows_file, full, tmp_path, monkeypatch
):
    out = str(tmp_path / "resumed.jsonl")
    _interrupted(proposal, rows_file, out, monkeypatch)
    assert len(open(out + ".partial").read().splitlines()) == 4  # header, 2 rows, cut line
    assert _sample(proposal, rows_file, out) == 3  # rows 2..4; the whole first batch is kept
    assert open(out).read() == open(full).read()
    assert not os.path.exists(out + ".partial")
    assert _sample(proposal, rows_file, out) == 0  # finished: nothing to do


@pytest.mark.parametrize(
    "change, words",
    [
        ("shuffled_input", "the input rows changed"),
        ("num_samples", "settings.num_samples: 2 -> 3"),
        ("seed", "settings.seed: 1 -> 2"),
        ("no_header", "no fingerprint header"),
    ],
)
def test_a_partial_output_of_another_job_is_refused(
    proposal, rows_file, full, tmp_path, monkeypatch, change, words
):
    out = str(tmp_path / "o.jsonl")
    _interrupted(proposal, rows_file, out, monkeypatch)
    before = open(out + ".partial").read()
    inp, kwargs = rows_file, {}
    if change == "shuffled_input":
        rows = _rows()
        random.Random(0).shuffle(rows)
        inp = _write(tmp_path / "shuffled.jsonl", rows)
    elif change == "no_header":  # a partial file from an older version
        with open(out + ".partial", "w") as f:
            f.write("".join(open(full).readlines()[:2]))
        before = open(out + ".partial").read()
    else:
        kwargs = {change: {"num_samples": 3, "seed": 2}[change]}
    with pytest.raises(resumable.FingerprintMismatch, match="--restart") as e:
        _sample(proposal, inp, out, **kwargs)
    assert words in str(e.value)
    assert open(out + ".partial").read() == before  # nothing lost or mixed
    if change == "num_samples":
        return  # (restarting would compile another decode shape)
    # --restart discards the partial output and samples everything for the new job.
    assert _sample(proposal, inp, out, restart=True, **kwargs) == 5
    if change == "no_header":
        assert open(out).read() == open(full).read()


def test_int8_proposal_samples_from_int8_weights_and_never_resumes_a_float_job(
    proposal, rows_file, tmp_path, monkeypatch
):
    out = str(tmp_path / "o.jsonl")
    _interrupted(proposal, rows_file, out, monkeypatch)
    with pytest.raises(resumable.FingerprintMismatch, match="proposal"):
        _sample(proposal, rows_file, out, int8_proposal=True)
    seen = []

    def record_models(models, *args, **kwargs):  # what would decode (no compile needed)
        seen.append(models)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "generate", record_models)
    with pytest.raises(KeyboardInterrupt):
        _sample(proposal, rows_file, out, restart=True, int8_proposal=True)
    assert is_quantized(seen[0].proposal[0]) and not is_quantized(proposal[1])


def test_prompt_only_rows_are_refused_clearly(proposal, tmp_path):
    path = _write(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    with pytest.raises(DataError, match=r"prompts\.jsonl:1: row has 'prompt' but no 'chosen'"):
        _sample(proposal, path, str(tmp_path / "o.jsonl"))


def test_too_long_requests_fail_before_any_file(proposal, rows_file, tmp_path):
    out = str(tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="exceeds the model context"):
        _sample(proposal, rows_file, out, max_new_tokens=10_000)
    assert os.listdir(tmp_path) == []
