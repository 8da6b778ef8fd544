"""The embedded experiment: world determinism, scorers on hand-made strings,
report aggregation, and the `--quick` end-to-end run asserting the paper's
qualitative claims."""

import json
import os
import random
import subprocess
import sys

import pytest

from experiments.demo import report, scorers
from experiments.demo import world as W

SPEC = W.WorldSpec(num_entities=30, num_eval=20)
VALUES = {"capital": ("Mekbar", "Tesville"), "colour": W.COLOURS, "number": W.NUMBERS}


def test_world_is_a_function_of_the_seed():
    a, b, c = W.make_world(3, SPEC), W.make_world(3, SPEC), W.make_world(4, SPEC)
    assert a == b
    assert a.facts != c.facts and a.base != c.base


def test_world_splits_separate_knowledge_from_alignment():
    w = W.make_world(0, SPEC)
    assert len(w.facts) == 30
    assert set(w.aligned_entities).isdisjoint(w.eval_entities)
    assert set(w.aligned_entities) | set(w.eval_entities) == set(w.facts)
    assert len(w.aligned_entities) == round(0.25 * 30)
    # The base corpus covers every entity and attribute base_repeats times.
    assert len(w.base) == 30 * 3 * SPEC.base_repeats
    assert {e.entity for e in w.base} == set(w.facts)
    # The aligned set is target-style only and never mentions an eval entity.
    assert {e.style for e in w.aligned} == {W.TARGET_STYLE}
    assert {e.entity for e in w.aligned} == set(w.aligned_entities)
    assert all(e.entity not in a.answer for e in w.eval for a in w.aligned)
    # Evaluation asks about unseen entities; references state the table's facts.
    assert {e.entity for e in w.eval} <= set(w.eval_entities)
    assert all(e.value == w.facts[e.entity][e.attribute] for e in w.eval)
    assert len(w.eval) == 20


def test_base_corpus_mixture_and_noise():
    w = W.make_world(1, W.WorldSpec(num_entities=200))
    n = len(w.base)
    styles = {s: sum(e.style == s for e in w.base) / n for s in W.STYLES}
    # 3600 draws: each share is within 4 binomial standard deviations (< 0.035).
    for s, p in zip(W.STYLES, W.WorldSpec().style_mix, strict=True):
        assert abs(styles[s] - p) < 0.035, (s, styles[s], p)
    noisy = sum(e.value != w.facts[e.entity][e.attribute] for e in w.base) / n
    assert abs(noisy - W.WorldSpec().fact_noise) < 0.012
    # Every base answer is stated in its own style and states its own value.
    for e in w.base[:500]:
        p = scorers.parse_answer(e.answer)
        assert (p.style, p.entity, p.attribute, p.value) == (
            e.style,
            e.entity,
            e.attribute,
            e.value,
        )


def test_citations_are_a_separate_behaviour_with_their_own_draws():
    w = W.make_world(1, W.WorldSpec(num_entities=200))
    rate = lambda xs: sum(e.cited for e in xs) / len(xs)
    assert abs(rate(w.base) - 0.2) < 0.03 and abs(rate(w.aligned) - 0.5) < 0.06
    assert all(scorers.format_compliant(e.answer) == e.cited for e in w.base[:500])
    # Without citations the world is the same draw for draw, only uncited.
    plain = W.make_world(1, W.WorldSpec(num_entities=200, citation_rate=0.0))
    strip = lambda a: scorers.split_citation(a)[0]
    assert [strip(e.answer) for e in w.base] == [e.answer for e in plain.base]
    rng = random.Random(0)
    formatted = [W.format_answer(rng, e) for e in w.aligned]
    assert all(map(scorers.format_compliant, formatted))
    styles = [scorers.parse_answer(a).style for a in formatted]
    assert all(0.25 < styles.count(s) / len(styles) < 0.42 for s in W.STYLES)


def test_rejected_answer_keeps_the_fact_and_changes_the_style():
    w = W.make_world(0, SPEC)
    rng = random.Random(0)
    for e in w.aligned:
        p = scorers.parse_answer(W.rejected_answer(rng, e))
        assert p.style != W.TARGET_STYLE
        assert (p.entity, p.attribute, p.value) == (e.entity, e.attribute, e.value)


@pytest.mark.parametrize(
    "text,parsed",
    [
        (
            "Certainly! The capital of Zorvania is Mekbar. I hope this helps.",
            ("polite", "Zorvania", "capital", "Mekbar"),
        ),
        ("Zorvania has blue as its colour.", ("neutral", "Zorvania", "colour", "blue")),
        ("Ugh. The number of Zorvania is six. Now go away.", ("rude", "Zorvania", "number", "six")),
        # Opener and closer from different styles: not a template.
        ("Certainly! The capital of Zorvania is Mekbar. Stop asking.", None),
        # Cut before the closer, trailing text, doubled fact, unknown attribute.
        ("Certainly! The capital of Zorvania is Mekbar.", None),
        ("The capital of Zorvania is Mekbar. Human", None),
        ("The capital of Zorvania is Mekbar. The capital of Zorvania is Mekbar.", None),
        ("The anthem of Zorvania is Mekbar.", None),
        # The closing citation is not part of the template; a cut one is trailing text.
        (
            "Ugh. The number of Zorvania is six. Now go away. (Source: World Atlas.)",
            ("rude", "Zorvania", "number", "six"),
        ),
        ("The capital of Zorvania is Mekbar. (Source: World", None),
    ],
)
def test_parse_answer(text, parsed):
    got = scorers.parse_answer(text)
    assert (got and (got.style, got.entity, got.attribute, got.value)) == (parsed or None)


def test_scorers_on_hand_made_answers():
    ok = "Of course! Zorvania has Mekbar as its capital. Have a lovely day."
    assert scorers.style_compliant(ok)
    assert scorers.well_formed(ok) and not scorers.well_formed(ok, finished=False)
    cited = ok + " (Source: World Atlas.)"
    assert scorers.style_compliant(cited) and scorers.format_compliant(cited)
    assert not scorers.format_compliant(ok)
    assert not scorers.format_compliant(cited + " (Source: World Atlas.)")
    assert scorers.factually_accurate(ok, "Zorvania", "capital", "Mekbar", VALUES["capital"])
    # Right style markers but a rude one inside, or only an opener: not compliant.
    assert not scorers.style_compliant("Certainly! Ugh. The capital of X is Y. I hope this helps.")
    assert not scorers.style_compliant("Certainly! The capital of Zorvania is Mekbar.")
    # Wrong value, hedged values, wrong entity: not accurate.
    acc = scorers.factually_accurate
    assert not acc(
        "The capital of Zorvania is Tesville.", "Zorvania", "capital", "Mekbar", VALUES["capital"]
    )
    assert not acc(
        "Zorvania: Mekbar or Tesville.", "Zorvania", "capital", "Mekbar", VALUES["capital"]
    )
    assert not acc(
        "The capital of Blorvia is Mekbar.", "Zorvania", "capital", "Mekbar", VALUES["capital"]
    )
    # distinct-2 by hand: "a b a b" has bigrams ab, ba, ab -> 2 unique of 3;
    # with "a b c": ab, bc -> 3 unique of 5 overall.
    assert scorers.distinct_n(["a b a b"]) == pytest.approx(2 / 3)
    assert scorers.distinct_n(["a b a b", "a b c"]) == pytest.approx(3 / 5)


def test_score_answers_means():
    w = W.make_world(0, SPEC)
    ex = w.eval[:4]
    good = [e.answer for e in ex]
    wrong_value = [v for v in w.values[ex[1].attribute] if v != ex[1].value][0]
    answers = [
        good[0],
        f"Ugh. The {ex[1].attribute} of {ex[1].entity} is {wrong_value}. Stop asking.",
        good[2],
        "Certainly! The",
    ]
    m = scorers.score_answers(answers, ex, w.values, finished=[True, True, False, False])
    assert m["style_compliance"] == 2 / 4
    assert m["factual_accuracy"] == 2 / 4
    assert m["well_formed"] == 2 / 4  # the third is cut at the token limit
    with pytest.raises(ValueError, match="answers for"):
        scorers.score_answers(answers[:3], ex, w.values)


def test_report_aggregates_mean_and_sample_std(tmp_path):
    metrics = dict.fromkeys(report.METRICS, 1.0)
    runs = [
        {"ram_product": {**metrics, "style_compliance": 0.5}, "proposal": metrics},
        {"ram_product": {**metrics, "style_compliance": 1.0}, "proposal": metrics},
    ]
    res = report.write_results(str(tmp_path), runs, {"quick": True})
    assert list(res["methods"]) == ["proposal", "ram_product"]
    assert res["methods"]["ram_product"]["style_compliance"] == pytest.approx(0.75)
    assert res["std"]["ram_product"]["style_compliance"] == pytest.approx(0.5**0.5 / 2)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["methods"] == res["methods"]
    assert "| ram_product |" in (tmp_path / "results.md").read_text()
    for png in ("accuracy_vs_style.png", "ttft.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="lacks"):
        report.aggregate([{"proposal": metrics}, {"proposal": {"style_compliance": 1.0}}])


def test_corrector_rows_pair_each_draft_with_the_aligned_answer():
    from experiments.demo.pipeline import corrector_rows

    rows = [
        {"prompt": "Q1?", "chosen": "A1", "sampling": ["d1", "d2", "d3"]},
        {"prompt": "Q2?", "chosen": "A2", "sampling": "e1"},
    ]
    assert corrector_rows(rows, 2) == [
        {"prompt": "Q1?\n\nDraft: d1", "chosen": "A1"},
        {"prompt": "Q1?\n\nDraft: d2", "chosen": "A1"},
        {"prompt": "Q2?\n\nDraft: e1", "chosen": "A2"},
    ]


def test_plan_names_every_method_and_rejects_no_seeds():
    from experiments.demo.pipeline import Plan

    full = Plan.make("/tmp/x", quick=False, seeds=3)
    assert full.objectives == ("ram_sft", "ram_dpo", "ram_mc")
    modes = set(full.ram_modes["ram_sft"]) | {"proposal"}
    assert modes == {"proposal", "aligner", "product", "par", "par_kl", "sir", "seq_sir"}
    assert Plan.make("/tmp/x", quick=True, seeds=1).objectives == ("ram_sft",)
    with pytest.raises(ValueError, match="at least one seed"):
        Plan.make("/tmp/x", quick=True, seeds=0)


# Margins of the qualitative claims, set from 5 measured `--quick` runs (world
# seeds 0, 1, 2; aligner seeds 0-1) on 2 shared CPU cores. Measured worst cases:
# RAM style - proposal style >= 0.84; RAM accuracy - aligner accuracy >= 0.90;
# RAM - proposal_sft >= -0.12 (style) and >= -0.02 (accuracy); RAM TTFT / the
# corrector's <= 0.26. This test runs world seed 0, seed 0 (measured: 0.94,
# 0.92, +0.04 / +0.19 against proposal_sft, 0.16), deterministic up to float
# reassociation across machines. The composition claims (world seed 0, seed 0,
# with the citation world: both aligners 0.94 style / 0.73 format / 0.90
# accuracy against the proposal's 0.02 / 0.12 / 0.96; the format aligner alone
# 0.06 style, 0.79 format; the format weight from 0 to 2: format 0.42 -> 0.77)
# use the margins below.
STYLE_GAP_OVER_PROPOSAL = 0.5
ACCURACY_GAP_OVER_ALIGNER = 0.5
CLOSE_TO_PROPOSAL_SFT = 0.15
FORMAT_GAP_OVER_PROPOSAL = 0.3
ACCURACY_KEPT = 0.15  # composed aligners stay within this of the proposal's accuracy
FORMAT_ALIGNER_STYLE_LEAK = 0.2  # the format aligner alone barely moves the style
SWEEP_FORMAT_RISE = 0.15
# ram_product with the proposal's weights stored as int8 against full precision
# (world seed 0, seed 0: style 0.96 and accuracy 0.88 for both).
INT8_WITHIN = 0.03


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # the experiment runs on one CPU device
    return env


# The experiment's default compilation cache, which the README's commands share.
COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ram_jax", "jax_compilation_cache")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """The `--quick` experiment's output directory."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.demo", f"--out={out}", "--quick"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_quick_run_reproduces_the_claims(quick_demo):
    out = quick_demo
    res = json.loads((out / "results.json").read_text())
    m = res["methods"]
    methods = ("proposal", "aligner", "proposal_sft", "corrector", "ram_product")
    for name in methods + ("ram_product_format", "ram_product_both"):
        assert set(m[name]) == set(report.METRICS), name
    ram, prop, small, sft = m["ram_product"], m["proposal"], m["aligner"], m["proposal_sft"]
    # Alignment comes from the small aligner, knowledge from the proposal.
    assert ram["style_compliance"] >= prop["style_compliance"] + STYLE_GAP_OVER_PROPOSAL, m
    assert ram["factual_accuracy"] >= small["factual_accuracy"] + ACCURACY_GAP_OVER_ALIGNER, m
    # As good as fine-tuning the whole proposal, while training ~1/8 of its parameters.
    for k in ("style_compliance", "factual_accuracy"):
        assert ram[k] >= sft[k] - CLOSE_TO_PROPOSAL_SFT, (k, m)
    assert 0 < ram["trainable_params"] * 4 < sft["trainable_params"]
    assert ram["well_formed"] >= 0.8
    # First-token latencies are measured and reported (results.md), never asserted: on
    # shared CI cores a timing threshold would test the machine's load, not the code.
    assert ram["ttft_seconds"] > 0 and m["corrector"]["ttft_seconds"] > 0
    assert "| ram_product |" in (out / "results.md").read_text()
    int8 = m["ram_product_int8"]
    for k in ("style_compliance", "factual_accuracy"):
        assert abs(int8[k] - ram[k]) <= INT8_WITHIN, (k, m)
    assert (out / "accuracy_vs_style.png").stat().st_size > 0
    # Two aligners, one behaviour each, composed: both behaviours, the proposal's facts.
    both, fmt = m["ram_product_both"], m["ram_product_format"]
    assert both["style_compliance"] >= prop["style_compliance"] + STYLE_GAP_OVER_PROPOSAL, m
    assert both["format_compliance"] >= prop["format_compliance"] + FORMAT_GAP_OVER_PROPOSAL, m
    assert both["factual_accuracy"] >= prop["factual_accuracy"] - ACCURACY_KEPT, m
    assert fmt["format_compliance"] >= prop["format_compliance"] + FORMAT_GAP_OVER_PROPOSAL, m
    assert fmt["style_compliance"] <= prop["style_compliance"] + FORMAT_ALIGNER_STYLE_LEAK, m
    sweep = {w: {k: v[0] for k, v in x.items()} for w, x in res["sweep"].items()}
    assert set(sweep) == {"0.0", "0.5", "1.0", "2.0"}
    assert (
        sweep["2.0"]["format_compliance"] >= sweep["0.0"]["format_compliance"] + SWEEP_FORMAT_RISE
    )
    assert sweep["2.0"]["style_compliance"] >= prop["style_compliance"] + STYLE_GAP_OVER_PROPOSAL
    assert (out / "weight_sweep.png").stat().st_size > 0


def _readme_block(start_marker: str) -> str:
    """The first ```bash block after `start_marker` in the README."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    body = text[text.index(start_marker) :]
    return body[body.index("```bash\n") + 8 : body.index("\n```", body.index("```bash"))]


def test_readme_own_data_commands_run_as_written(quick_demo, tmp_path):
    """README "Run on your own data", verbatim, on the quick demo's proposal and world."""
    world = quick_demo / "world"
    for name, source in (
        ("aligned.jsonl", "aligned.jsonl"),
        ("eval.jsonl", "eval_prompts.jsonl"),
        ("corpus.jsonl", "base.jsonl"),
    ):
        (tmp_path / name).write_bytes((world / source).read_bytes())
    os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)  # `python` in the README: this interpreter
    env = {
        **_env(),
        "P": str(quick_demo / "proposal" / "export"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": ROOT,
        # Step 1's batch and step 3's decode settings are the demo's: those
        # compilations come from the quick run's cache.
        "JAX_COMPILATION_CACHE_DIR": COMPILE_CACHE,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    # The scratch block's tokenizer command (its proposal stage is the demo's own).
    scratch = _readme_block("**A proposal from scratch.**").split("\npython -m ram_jax.main")[0]
    commands = _readme_block("<!-- own-data commands: begin -->")
    for script in (scratch, commands):
        proc = subprocess.run(
            ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, script + proc.stdout[-2000:] + proc.stderr[-3000:]
    from ram_jax.models.tokenizer import load_tokenizer, tokenizer_length

    assert 300 < tokenizer_length(load_tokenizer(str(tmp_path / "tokenizer.json"))) <= 512
    aligned = [json.loads(x) for x in open(tmp_path / "aligned.jsonl")]
    sampled = [json.loads(x) for x in open(tmp_path / "aligned_sampled.jsonl")]
    assert [r["prompt"] for r in sampled] == [r["prompt"] for r in aligned]
    assert all(len(r["sampling"]) == 4 for r in sampled)
    summary = json.loads((tmp_path / "runs/my_aligner/summary.json").read_text())
    assert summary["step"] == 200 and summary["export_dir"].endswith("export")
    outputs = json.loads((tmp_path / "outputs.json").read_text())
    prompts = [json.loads(x)["instruction"] for x in open(tmp_path / "eval.jsonl")]
    assert [o["instruction"] for o in outputs] == prompts
    assert all(isinstance(o["output"], str) for o in outputs)
