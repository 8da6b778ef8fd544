"""Proposal-sample synthesis: K samples per row, input rows preserved, exact resume."""

import json
import os

import jax
import pytest

from ram_jax import sample_proposal
from ram_jax.data import read_rows
from ram_jax.decoding.sampling import SamplingParams
from ram_jax.models.config import get_preset
from ram_jax.models.convert import save_hf
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


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "rows.jsonl"
    lines = open(os.path.join(FIXTURES, "smoke_eval.jsonl")).read().splitlines()[:5]
    rows = [{**json.loads(x), "id": i} for i, x in enumerate(lines)]
    for r in rows:
        del r["sampling"]  # the fixture already has samples; these rows must get new ones
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _sample(proposal, rows_file, out):
    config, params = proposal
    return sample_proposal.sample_file(
        rows_file,
        out,
        p_params=params,
        p_config=config,
        tokenizer=load_tokenizer(os.path.join(FIXTURES, "tokenizer.json")),
        sampling=SAMPLING,
        num_samples=2,
        max_new_tokens=6,
        batch_size=2,
        seed=1,
    )


def test_k_samples_per_row_and_exact_resume(proposal, rows_file, tmp_path):
    full = str(tmp_path / "full.jsonl")
    assert _sample(proposal, rows_file, full) == 5
    out = [json.loads(x) for x in open(full)]
    inp = [json.loads(x) for x in open(rows_file)]
    assert [r["id"] for r in out] == list(range(5))
    for o, i in zip(out, inp, strict=True):
        assert {k: v for k, v in o.items() if k != "sampling"} == i
        assert len(o["sampling"]) == 2 and all(isinstance(s, str) for s in o["sampling"])
    assert len({s for o in out for s in o["sampling"]}) > 5  # samples differ
    # The output is valid training data for ram_mc with K = 2.
    assert len(read_rows(full, need=("sampling",))[0].sampling) == 2

    # Interrupted after one batch and half a line: the rerun redoes only what is missing.
    resumed = str(tmp_path / "resumed.jsonl")
    with open(resumed + ".partial", "w") as f:
        f.write("".join(open(full).readlines()[:3]) + '{"trunc')
    assert _sample(proposal, rows_file, resumed) == 3  # rows 2..4 (whole batches kept: 2)
    assert open(resumed).read() == open(full).read()
    assert not os.path.exists(resumed + ".partial")
    assert _sample(proposal, rows_file, resumed) == 0  # finished: nothing to do
