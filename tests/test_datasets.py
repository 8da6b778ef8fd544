"""Dataset builders: exact rows from the fixture files in the real schemas, subsets, CLI."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ram_jax import datasets
from ram_jax.datasets import correction, manual, prepare, ultrachat

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "datasets")
HH = os.path.join(FIX, "hh-rlhf")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raw_hh(subset, split):
    with gzip.open(os.path.join(HH, subset, f"{split}.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f]


def _hand_split(conv):
    # The reference's rule: split at the last "\n\nAssistant: ", the space in the prompt.
    i = conv.rindex("\n\nAssistant: ") + len("\n\nAssistant: ")
    return conv[:i], conv[i:]


@pytest.fixture(scope="module")
def hh_built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    out = {}
    for config in ("all", "helpful-base"):
        b = datasets.get_builder("hh_rlhf", config, data_dir=data_dir)
        datasets.build(b, HH)
        out[config] = b
    return out


def test_hh_rows_match_hand_split_through_tfds(hh_built):
    rows = datasets.load_rows(hh_built["helpful-base"], "train")
    raw = _raw_hh("helpful-base", "train")
    expected = []
    for r in raw:
        p, c = _hand_split(r["chosen"])
        p2, rej = _hand_split(r["rejected"])
        if p == p2:  # the fixture's one mismatched pair is dropped
            expected.append({"prompt": p, "chosen": c, "rejected": rej})
    assert len(raw) == 13 and len(expected) == 12
    assert rows == expected
    assert rows[0]["prompt"].endswith("\n\nAssistant: ") and rows[0]["chosen"].startswith("The")


def test_hh_all_concatenates_the_four_subsets_in_order(hh_built):
    rows = datasets.load_rows(hh_built["all"], "train")
    assert len(rows) == 12 + 10 + 6 + 8
    tags = [r["prompt"].split("[")[1].split(" ")[0] for r in rows]
    assert (
        tags
        == ["helpful-base"] * 12
        + ["harmless-base"] * 10
        + ["helpful-online"] * 6
        + ["helpful-rejection-sampled"] * 8
    )
    assert "test300" not in hh_built["all"].info.splits
    assert hh_built["all"].info.splits["test"].num_examples == 320 + 320 + 4 + 5


def test_test300_is_a_fixed_seed_subset_in_source_order(hh_built):
    full = datasets.load_rows(hh_built["helpful-base"], "test")
    sub = datasets.load_rows(hh_built["helpful-base"], "test300")
    idx = datasets.test_subset(len(full))
    assert len(full) == 320 and len(sub) == 300 == len(set(idx.tolist()))
    assert sub == [full[i] for i in idx]
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, manual.test_subset(320, 300, 42))
    assert not np.array_equal(idx, manual.test_subset(320, 300, 43))
    with pytest.raises(ValueError, match="cannot draw a 300-example"):
        manual.test_subset(299)


def test_tldr_sft_and_comparisons_layouts():
    import pyarrow.parquet as pq

    sft = datasets.get_builder("tldr", "sft")
    rows = list(sft.rows(os.path.join(FIX, "tldr"), "train"))
    raw = pq.read_table(os.path.join(FIX, "tldr", "data", "train-00000-of-00001.parquet"))
    raw = raw.to_pylist()
    assert [(r["prompt"], r["chosen"]) for r in rows] == [(x["prompt"], x["label"]) for x in raw]
    assert rows[0]["prompt"].endswith("\nTL;DR:") and rows[0]["rejected"] == ""
    comp = datasets.get_builder("tldr", "comparisons")
    rows = list(comp.rows(os.path.join(FIX, "tldr-comparisons"), "valid1"))
    assert rows[1]["prompt"] == (
        "SUBREDDIT: r/fixtures\nTITLE: Post valid1 1\nPOST: Alba wrote 1 lines about the home."
        "\nTL;DR:"
    )
    assert (rows[1]["chosen"], rows[1]["rejected"]) == ("good summary 1", "bad summary 1")
    test300 = list(sft.rows(os.path.join(FIX, "tldr"), "test300"))
    assert len(test300) == 300


def test_ultrachat_both_layouts_give_the_same_first_round():
    b = datasets.get_builder("ultrachat", "first_round")
    h4 = list(b.rows(os.path.join(FIX, "ultrachat"), "train"))
    st = list(b.rows(os.path.join(FIX, "ultrachat-stingning"), "train"))
    assert h4 == st and len(h4) == 24
    assert h4[3]["prompt"] == "Question 3: tell me about the river of Boro."
    assert h4[3]["chosen"] == "It is " + "very " * 9 + "nice (3)."


def test_ultrachat_length_filter_matches_hand_selection():
    rows = [manual.make_row(f"p{i} " + "x " * i, "y " * (10 - i)) for i in range(10)]

    def words(text):
        return len(text.split())

    # Templated prompt "Human: p{i} x*i Assistant:" has i + 3 words (<= 7: i <= 4); the
    # response has 10 - i (<= 16 - 7 - 1 = 8: i >= 2). So rows 2, 3, 4 fit.
    kept = ultrachat.length_filter(
        rows, words, num_examples=2, max_length=16, max_prompt_length=7, seed=0
    )
    order = np.random.default_rng(0).permutation(10).tolist()
    fits = [i for i in order if i in (2, 3, 4)]
    assert [r["prompt"] for r in kept] == [rows[i]["prompt"] for i in fits[:2]]
    b = datasets.get_builder("ultrachat", "first_round_120k")
    with pytest.raises(ValueError, match="pass the proposal's tokenizer"):
        list(b.rows(os.path.join(FIX, "ultrachat"), "train"))


def test_ultrachat_120k_with_a_tokenizer_keeps_every_short_fixture_row():
    tok = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer.json")
    if not os.path.exists(tok):
        pytest.fail("tests/fixtures/tokenizer.json is missing")
    b = datasets.get_builder("ultrachat", "first_round_120k", tokenizer=tok)
    rows = list(b.rows(os.path.join(FIX, "ultrachat"), "train"))
    everything = list(
        datasets.get_builder("ultrachat", "first_round").rows(
            os.path.join(FIX, "ultrachat"), "train"
        )
    )
    order = np.random.default_rng(ultrachat.SHUFFLE_SEED).permutation(24)
    assert rows == [everything[int(i)] for i in order]


def test_alpaca_eval_rows_and_ready_jsonl_fallback(tmp_path):
    b = datasets.get_builder("alpaca_eval")
    rows = list(b.rows(os.path.join(FIX, "alpaca_eval"), "test"))
    with open(os.path.join(FIX, "alpaca_eval", "alpaca_eval_gpt4_baseline.json")) as f:
        raw = json.load(f)
    assert [(r["prompt"], r["chosen"]) for r in rows] == [
        (x["instruction"], x["output"]) for x in raw
    ]
    # A ready JSONL replaces the original files.
    ready = [
        {"prompt": "a", "chosen": "b", "sampling": ["s1", "s2"]},
        {"prompt": "c", "chosen": "d"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ready))
    got = [
        manual.export_row(r)
        for r in datasets.get_builder("hh_rlhf", "all").rows(str(tmp_path), "train")
    ]
    assert got == ready
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n{"prompt": "x"}\n')
    with pytest.raises(
        ValueError, match=r"train.jsonl:2: row lacks string field\(s\) \['chosen'\]"
    ):
        list(datasets.get_builder("hh_rlhf", "all").rows(str(tmp_path), "train"))


def test_missing_files_name_the_files_and_the_source(tmp_path):
    (tmp_path / "unrelated.txt").write_text("x")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)helpful-base/train.jsonl.gz.*anthropics/hh-rlhf"
    ):
        list(datasets.get_builder("hh_rlhf", "helpful-base").rows(str(tmp_path), "train"))
    with pytest.raises(ValueError, match="config 'nope' unknown"):
        datasets.get_builder("hh_rlhf", "nope")


def test_correction_rows_and_export():
    rows = [
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"prompt": "R", "chosen": "fine", "sampling": ["draft"]},
    ]
    t = "\n\nHuman: {prompt}\n\nAssistant: "
    got = list(correction.correction_rows(rows, template=t))
    assert got[0] == {"prompt": "\n\nHuman: Q\n\nAssistant: bad\n\nCorrection: ", "chosen": "good"}
    assert got[1]["prompt"].endswith("draft\n\nCorrection: ") and got[1]["chosen"] == "fine"
    warm = list(correction.correction_rows(rows, target="answer"))
    assert [w["chosen"] for w in warm] == ["bad", "draft"]
    evals = [{"instruction": "I1", "output": "o1"}]
    assert list(correction.correction_eval_prompts(evals, template=t)) == [
        {"instruction": "\n\nHuman: I1\n\nAssistant: o1\n\nCorrection: "}
    ]
    refs = [{"instruction": "I1", "output": "ref", "dataset": "koala"}]
    out = prepare.export_outputs([{"instruction": "long", "output": "mine"}], refs, "ram")
    assert out == [{"instruction": "I1", "output": "mine", "generator": "ram", "dataset": "koala"}]
    with pytest.raises(ValueError, match="1 outputs but 2 eval prompts"):
        prepare.export_outputs([{"output": "x"}], refs * 2, "ram")


def test_prepare_cli_writes_alpaca_eval_reference_file(tmp_path):
    out = tmp_path / "tldr_test300.json"
    cmd = [
        sys.executable,
        "-m",
        "ram_jax.datasets.prepare",
        "--dataset=tldr",
        "--config=sft",
        f"--manual_dir={FIX}/tldr",
        "--split=test300",
        "--format=alpaca_eval",
        f"--output={out}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    recs = json.loads(out.read_text())
    full = list(datasets.get_builder("tldr", "sft").rows(f"{FIX}/tldr", "test"))
    idx = datasets.test_subset(320)
    assert [r["instruction"] for r in recs] == [full[i]["prompt"] for i in idx]
    assert {r["generator"] for r in recs} == {"reference"}
    assert recs[0]["dataset"] == "tldr/sft/test300"


def test_training_rows_read_a_built_tfds_source(hh_built, monkeypatch):
    from ram_jax.data import sources as rows_lib

    monkeypatch.setenv("TFDS_DATA_DIR", hh_built["helpful-base"].data_dir.split("/ram_hh_rlhf")[0])
    rows = rows_lib.read_rows("tfds:hh_rlhf/helpful-base:train")
    expected = datasets.load_rows(hh_built["helpful-base"], "train")
    assert [(r.prompt, r.chosen, r.rejected) for r in rows] == [
        (e["prompt"], e["chosen"], e["rejected"]) for e in expected
    ]
    with pytest.raises(rows_lib.DataError, match="no split 'nope'"):
        rows_lib.read_rows("tfds:hh_rlhf/helpful-base:nope")
    monkeypatch.setenv("TFDS_DATA_DIR", "/nonexistent-tfds-dir")
    with pytest.raises(rows_lib.DataError, match="not built.*ram_jax.datasets.prepare"):
        rows_lib.read_rows("tfds:hh_rlhf/harmless-base:train")
