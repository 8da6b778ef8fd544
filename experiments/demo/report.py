"""Aggregates per-seed metrics into results.json, results.md and PNG plots."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence

from ram_jax.io import write_atomic

METRICS = (
    "style_compliance",
    "format_compliance",
    "factual_accuracy",
    "well_formed",
    "distinct_2",
    "trainable_params",
    "train_seconds",
    "ttft_seconds",
    "tokens_per_second",
)
# Table order: the baselines first, then the RAM variants in the order run.
BASELINES = ("proposal", "aligner", "proposal_sft", "corrector")


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    # Sample standard deviation (n - 1): the spread a new seed would show.
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def method_order(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in BASELINES if n in names] + [n for n in names if n not in BASELINES]


def aggregate(per_seed: Sequence[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    """Per-seed `{method: {metric: value}}` -> (means, standard deviations).

    A method must have every metric in every seed; a missing one is an error
    rather than a silently shorter average.
    """
    if not per_seed:
        raise ValueError("no seeds to aggregate.")
    names = method_order(n for run in per_seed for n in run)
    means, stds = {}, {}
    for name in names:
        means[name], stds[name] = {}, {}
        for metric in METRICS:
            try:
                xs = [float(run[name][metric]) for run in per_seed]
            except KeyError as e:
                raise ValueError(f"method {name!r} lacks {e} in some seed.") from None
            means[name][metric], stds[name][metric] = _mean_std(xs)
    return means, stds


def _fmt(metric: str, m: float, s: float, n: int) -> str:
    if metric == "trainable_params":
        return f"{m / 1e3:.0f}k" if m else "0"
    if metric in ("ttft_seconds",):
        body = f"{m * 1e3:.0f}" + (f" ± {s * 1e3:.0f}" if n > 1 else "")
        return body + " ms"
    if metric in ("train_seconds", "tokens_per_second"):
        return f"{m:.0f}" + (f" ± {s:.0f}" if n > 1 else "")
    return f"{m:.2f}" + (f" ± {s:.2f}" if n > 1 else "")


def markdown_table(means: dict, stds: dict, num_seeds: int) -> str:
    header = (
        "| method | style | format | accuracy | well-formed | distinct-2 | trainable params "
        "| train s | TTFT | tokens/s |"
    )
    lines = [header, "|" + " --- |" * 10]
    for name in means:
        cells = [_fmt(k, means[name][k], stds[name][k], num_seeds) for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(means: dict, stds: dict, out_dir: str) -> list[str]:
    """Accuracy-vs-style scatter and a TTFT bar chart; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    placed: list[tuple[float, float]] = []
    for name, m in means.items():
        s = stds[name]
        x, y = m["style_compliance"], m["factual_accuracy"]
        is_ram = name.startswith("ram_")
        ax.errorbar(
            x,
            y,
            xerr=s["style_compliance"],
            yerr=s["factual_accuracy"],
            fmt="o" if is_ram else "s",
            color="tab:blue" if is_ram else "tab:gray",
            capsize=3,
        )
        # Methods often land on the same point: stack their labels downwards.
        clashes = sum(abs(x - px) < 0.06 and abs(y - py) < 0.04 for px, py in placed)
        placed.append((x, y))
        ax.annotate(
            name, (x, y), fontsize=7, xytext=(5, 3 - 9 * clashes), textcoords="offset points"
        )
    ax.set_xlim(-0.05, 1.1)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("style compliance (aligned behaviour)")
    ax.set_ylabel("factual accuracy on unseen entities (knowledge)")
    ax.set_title("RAM: knowledge from the proposal, style from the aligner")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, os.path.join(out_dir, "accuracy_vs_style.png")))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(means) + 1.5))
    names = list(means)
    ttft = [means[n]["ttft_seconds"] * 1e3 for n in names]
    err = [stds[n]["ttft_seconds"] * 1e3 for n in names]
    colors = ["tab:blue" if n.startswith("ram_") else "tab:gray" for n in names]
    ax.barh(names, ttft, xerr=err, color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("time to first token (ms, batch decode on this CPU)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "ttft.png")))
    plt.close(fig)
    return paths


SWEEP_METRICS = ("style_compliance", "format_compliance", "factual_accuracy")


def aggregate_sweep(per_seed: Sequence[dict]) -> dict:
    """Per-seed `{weight: {metric: value}}` -> `{weight: {metric: (mean, std)}}`."""
    weights = sorted({w for run in per_seed for w in run}, key=float)
    return {
        w: {k: _mean_std([float(run[w][k]) for run in per_seed]) for k in SWEEP_METRICS}
        for w in weights
    }


def sweep_table(sweep: dict, num_seeds: int) -> str:
    lines = ["| format weight | style | format | accuracy |", "| --- | --- | --- | --- |"]
    for w, m in sweep.items():
        cells = [_fmt(k, *m[k], num_seeds) for k in SWEEP_METRICS]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(sweep: dict, out_dir: str) -> str:
    """Style, format and accuracy against the format aligner's weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    weights = [float(w) for w in sweep]
    labels = ("style (aligner 1)", "format (aligner 2)", "accuracy")
    for k, label in zip(SWEEP_METRICS, labels, strict=True):
        means = [m[k][0] for m in sweep.values()]
        stds = [m[k][1] for m in sweep.values()]
        ax.errorbar(weights, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xlabel("weight of the format aligner (style aligner at 1)")
    ax.set_ylabel("fraction of answers")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("P x Q_style x Q_format^w: one behaviour per aligner")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = _save(fig, os.path.join(out_dir, "weight_sweep.png"))
    plt.close(fig)
    return path


def _save(fig, path: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def write_results(
    out_dir: str, per_seed: Sequence[dict], info: dict, sweeps: Sequence[dict] = ()
) -> dict:
    """Writes results.json, results.md and the plots; returns the JSON object.

    `sweeps`: per seed, `{format weight: metrics}` of the two-aligner sweep.
    """
    means, stds = aggregate(per_seed)
    sweep = aggregate_sweep(sweeps) if sweeps else {}
    results = {"methods": means, "std": stds, "per_seed": list(per_seed), "sweep": sweep, **info}
    write_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2) + "\n")
    plots = plot(means, stds, out_dir)
    n = len(per_seed)
    sweep_md = []
    if sweep:
        plots.append(plot_sweep(sweep, out_dir))
        sweep_md = [
            "Two aligners, `weighted_product` with the style aligner at weight 1 and the "
            "format aligner at the weight shown (decoded in one call with `ram_product_format` "
            "(weights 0, 1) and `ram_product_both` (1, 1): one row per prompt and weights):",
            "",
            sweep_table(sweep, n),
            "",
        ]
    md = [
        f"# RAM embedded experiment ({'quick' if info.get('quick') else 'full'} run, "
        f"{n} seed{'s' if n > 1 else ''}{', mean ± std' if n > 1 else ''})",
        "",
        markdown_table(means, stds, n),
        "",
        *sweep_md,
        "style: fraction of answers in the target (polite) style; format: fraction ending with "
        "the citation '(Source: World Atlas.)' (the second behaviour); accuracy: fraction stating "
        "the true attribute of an entity absent from the aligned set; well-formed: parses as "
        "exactly one answer template; trainable params and train s: the alignment step only "
        "(proposal pre-training is shared; proposal-sampling time is charged to the methods "
        "that read the samples); TTFT: median seconds from a batch of prompts to its first "
        "token (the corrector's includes the proposal's whole answer); tokens/s: steady "
        "decoding rate. Timings exclude compilation.",
        "",
        *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots],
        "",
    ]
    write_atomic(os.path.join(out_dir, "results.md"), "\n".join(md))
    return results
