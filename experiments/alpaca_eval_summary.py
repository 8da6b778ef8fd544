r"""Win rate and a length-controlled-style win rate from AlpacaEval judge annotation files.

  python experiments/alpaca_eval_summary.py runs/paper/judged/*/annotations.json [--json]

Input: the `annotations.json` that `alpaca_eval` writes next to its leaderboard,
a JSON list with one record per (instruction, reference, model output):
`output_1` the reference, `output_2` the model's output, `generator_2` the
model's name, and `preference` in [1, 2] (1: reference better, 2: model better;
the weighted GPT-4 Turbo evaluator gives the probability-weighted value in
between; 1.5 or the legacy 0 is a tie; missing/NaN = the judge failed and the
example is dropped). Several files or generators are summarised in one table.

Win rate: 100 * mean(preference - 1), exactly AlpacaEval's; standard error
100 * std / sqrt(n).

"LC-style" is NOT AlpacaEval 2's length-controlled win rate. AlpacaEval's GLM
regresses every leaderboard model's preferences jointly on a model term, a
length term and a per-instruction difficulty term fitted on the whole
leaderboard, which needs the other models' annotations. Here, per model, we
fit only the first two: a logistic regression of the soft label
p = preference - 1 on [1, tanh(dlen / sd(dlen))], dlen = len(output_2) -
len(output_1) in characters (AlpacaEval's length feature), by Newton's method
with a tiny ridge, and report 100 * sigmoid(intercept): the predicted win rate
at zero length difference. It removes the length bias the same way but
without the difficulty term, so the numbers track, but do not equal, the
official LC win rates; use `alpaca_eval` itself for numbers to compare with
the paper.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

import numpy as np

from ram_jax.io import DataError, read_objects


def load_annotations(path: str) -> list[dict]:
    """Records of one annotations file; errors name the file and line."""
    data = []
    for where, rec in read_objects(path):
        missing = [k for k in ("output_1", "output_2", "preference") if k not in rec]
        if missing:
            raise DataError(
                f"{where}: record lacks {missing}; pass alpaca_eval's annotations.json."
            )
        data.append(rec)
    return data


def soft_labels(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(p = preference - 1 in [0, 1], length difference) of the judged records."""
    p, dlen = [], []
    for rec in records:
        pref = rec["preference"]
        if pref is None or (isinstance(pref, float) and math.isnan(pref)):
            continue
        pref = 1.5 if pref == 0 else float(pref)
        if not 1.0 <= pref <= 2.0:
            where = repr(rec.get("instruction", "")[:40])
            raise ValueError(f"preference {pref} outside [1, 2] (instruction {where}).")
        p.append(pref - 1.0)
        dlen.append(len(rec["output_2"]) - len(rec["output_1"]))
    return np.asarray(p, np.float64), np.asarray(dlen, np.float64)


def win_rate(p: np.ndarray) -> tuple[float, float]:
    """(win rate, standard error), in percent."""
    if len(p) == 0:
        raise ValueError("no judged examples.")
    se = float(np.std(p, ddof=1) / math.sqrt(len(p))) if len(p) > 1 else float("nan")
    return 100.0 * float(np.mean(p)), 100.0 * se


def fit_length_glm(p: np.ndarray, dlen: np.ndarray, ridge: float = 1e-6, iters: int = 50):
    """Soft-label logistic regression of p on [1, tanh(dlen / sd)]; returns theta (2,)."""
    sd = float(np.std(dlen))
    x = np.tanh(dlen / sd) if sd > 0 else np.zeros_like(dlen)
    X = np.stack([np.ones_like(x), x], axis=1)
    theta = np.zeros(2)
    for _ in range(iters):
        q = 1.0 / (1.0 + np.exp(-X @ theta))
        grad = X.T @ (q - p) / len(p) + ridge * theta
        hess = (X * (q * (1 - q))[:, None]).T @ X / len(p) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    return theta


def lc_style_win_rate(p: np.ndarray, dlen: np.ndarray) -> float:
    """100 * sigmoid(intercept): the fitted win rate at zero length difference."""
    theta = fit_length_glm(p, dlen)
    return 100.0 / (1.0 + math.exp(-theta[0]))


def summarize(records: list[dict]) -> list[dict]:
    """One summary per model (`generator_2`)."""
    by_model = defaultdict(list)
    for rec in records:
        by_model[rec.get("generator_2", "model")].append(rec)
    out = []
    for name, recs in sorted(by_model.items()):
        p, dlen = soft_labels(recs)
        wr, se = win_rate(p)
        len_model = float(np.mean([len(r["output_2"]) for r in recs]))
        out.append(
            {
                "model": name,
                "n": int(len(p)),
                "win_rate": wr,
                "standard_error": se,
                "lc_style_win_rate": lc_style_win_rate(p, dlen),
                "wins": int(np.sum(p > 0.5)),
                "draws": int(np.sum(p == 0.5)),
                "losses": int(np.sum(p < 0.5)),
                "avg_length": len_model,
            }
        )
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | n | win rate | LC-style | W / D / L | avg length |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['win_rate']:.2f} ± {r['standard_error']:.2f} | "
            f"{r['lc_style_win_rate']:.2f} | {r['wins']} / {r['draws']} / {r['losses']} | "
            f"{r['avg_length']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("annotations", nargs="+", help="alpaca_eval annotations.json files")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    records = []
    for path in args.annotations:
        if os.path.isdir(path):
            path = os.path.join(path, "annotations.json")
        records += load_annotations(path)
    rows = summarize(records)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
