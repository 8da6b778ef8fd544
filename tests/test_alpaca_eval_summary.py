"""AlpacaEval summary: exact win rates, and the LC-style fit's optimality and limits."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import alpaca_eval_summary as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rec(pref, len_ref, len_model, model="ram"):
    return {
        "instruction": "i",
        "output_1": "r" * len_ref,
        "output_2": "m" * len_model,
        "generator_2": model,
        "preference": pref,
    }


def test_win_rate_matches_hand_computation():
    recs = [
        _rec(2.0, 10, 10),
        _rec(1.0, 10, 10),
        _rec(1.5, 10, 10),
        _rec(0, 10, 10),
        _rec(1.8, 10, 10),
        _rec(float("nan"), 10, 10),
        _rec(None, 10, 10),
    ]
    p, _ = S.soft_labels(recs)
    np.testing.assert_allclose(p, [1.0, 0.0, 0.5, 0.5, 0.8])  # NaN / None dropped, 0 = tie
    wr, se = S.win_rate(p)
    assert wr == pytest.approx(100 * 2.8 / 5)
    assert se == pytest.approx(100 * np.std([1, 0, 0.5, 0.5, 0.8], ddof=1) / math.sqrt(5))
    row = S.summarize(recs)[0]
    assert (row["n"], row["wins"], row["draws"], row["losses"]) == (5, 2, 2, 1)
    # With no length difference the length term is zero: LC-style equals the win rate
    # (up to the 1e-6 ridge, which shifts the fitted rate by ~1e-6 * intercept * 100).
    assert row["lc_style_win_rate"] == pytest.approx(wr, abs=1e-4)


def test_lc_style_fit_is_the_logistic_optimum_and_removes_length_bias():
    rng = np.random.default_rng(0)
    dlen = rng.normal(0, 300, size=400)
    # Judge that prefers longer answers: P(model wins) = sigmoid(0.3 + 1.5 tanh(dlen / sd)).
    x = np.tanh(dlen / np.std(dlen))
    p = 1 / (1 + np.exp(-(0.3 + 1.5 * x)))
    theta = S.fit_length_glm(p, dlen)
    q = 1 / (1 + np.exp(-(theta[0] + theta[1] * x)))
    grad = np.array([np.mean(q - p), np.mean((q - p) * x)]) + 1e-6 * theta
    np.testing.assert_allclose(grad, 0, atol=1e-10)  # first-order optimality
    np.testing.assert_allclose(theta, [0.3, 1.5], atol=1e-4)  # recovers the true model
    assert S.lc_style_win_rate(p, dlen) == pytest.approx(100 / (1 + math.exp(-theta[0])))
    # Shift every model answer longer: the raw win rate rises, the LC-style one barely moves.
    longer = dlen + 600
    xl = np.tanh(longer / np.std(longer))
    assert np.isclose(np.std(longer), np.std(dlen))
    pl = 1 / (1 + np.exp(-(0.3 + 1.5 * xl)))
    assert S.win_rate(pl)[0] > S.win_rate(p)[0] + 15
    assert abs(S.lc_style_win_rate(pl, longer) - 100 / (1 + math.exp(-0.3))) < 0.01


def test_cli_and_bad_files(tmp_path):
    f = tmp_path / "annotations.json"
    f.write_text(json.dumps([_rec(2.0, 5, 9, "a"), _rec(1.0, 5, 3, "a"), _rec(2.0, 5, 5, "b")]))
    res = subprocess.run(
        [sys.executable, "experiments/alpaca_eval_summary.py", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["model"], r["n"], r["win_rate"]) for r in rows] == [("a", 2, 50.0), ("b", 1, 100.0)]
    f.write_text(json.dumps([{"output_1": "x", "preference": 2}]))
    with pytest.raises(ValueError, match=r"json:1: record lacks \['output_2'\]"):
        S.load_annotations(str(f))
    with pytest.raises(ValueError, match="outside"):
        S.soft_labels([_rec(3.0, 1, 1)])
