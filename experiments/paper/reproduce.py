r"""Chains every stage of one paper table row; `launch/reproduce.sh` wraps this.

  python -m experiments.paper.reproduce ROW [--dry_run] [--launcher='launch/gpu.sh']
  python -m experiments.paper.reproduce --list

Stages, as the row needs them: data (training JSONL + AlpacaEval-format eval
file), proposal warm-up / SFT / DPO, offline negatives from the proposal,
the small model's SFT, the aligner (or the Aligner corrector), generation
on the eval prompts with the paper's decode settings, and the AlpacaEval 2
export. Stages shared between rows (one W.Up proposal serves several rows)
write to the same place and are skipped when their output exists, so
running rows one after another never trains anything twice.

Locations come from the environment:
  CKPT  HF model directories: Llama-3.1-8B, Llama-3.2-1B, Qwen2.5-14B, Qwen2.5-3B
  DATA  manual dataset directories: hh-rlhf/, tldr/, ultrachat/, alpaca_eval/
  OUT   everything produced (default ./runs/paper)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from experiments.paper import rows as R
from experiments.paper.stages import Planner

FIXTURES = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures")
)


def quote(arg: str) -> str:
    """Bash quoting that keeps each printed command on one line ($'..' for newlines)."""
    if "\n" in arg or "\t" in arg:
        body = arg.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
        return "$'" + body.replace("\t", "\\t") + "'"
    safe = all(ch.isalnum() or ch in "-_=./:,@%+{}$" for ch in arg)
    return arg if safe and arg else "'" + arg.replace("'", "'\\''") + "'"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", nargs="?")
    parser.add_argument("--list", action="store_true", help="print the row names")
    parser.add_argument("--dry_run", action="store_true", help="print every command, run none")
    parser.add_argument(
        "--launcher", default="", help="prefix of every command, e.g. launch/gpu.sh"
    )
    parser.add_argument(
        "--runlocal",
        action="store_true",
        help="the whole row in miniature on a CPU: tiny models, runlocal configs, the test "
        "fixtures as DATA and tests/fixtures/tokenizer.json (no CKPT needed)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for row in R.all_rows():
            print(row.name)
        return 0
    if not args.row:
        parser.error("give a ROW (see --list)")
    try:
        row = R.by_name(args.row)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    env = dict(os.environ)
    tokenizer = None
    if args.runlocal:
        env.setdefault("DATA", os.path.join(FIXTURES, "datasets"))
        env.setdefault("CKPT", "/unused")
        env.setdefault("OUT", "/tmp/ram_jax_paper_local")
        tokenizer = os.path.join(FIXTURES, "tokenizer.json")
    missing = [k for k in ("CKPT", "DATA") if not env.get(k)]
    if missing and not args.dry_run:
        print(f"set {' and '.join(missing)} (see --help) before running a row.", file=sys.stderr)
        return 2
    planner = Planner(
        row,
        env.get("CKPT", "$CKPT"),
        env.get("DATA", "$DATA"),
        env.get("OUT", os.path.join(os.getcwd(), "runs", "paper")),
        tokenizer=tokenizer,
    )
    prefix = args.launcher.split() if args.launcher else []
    steps = planner.steps()
    t0 = time.time()
    ran = 0
    for i, step in enumerate(steps, 1):
        line = " ".join(quote(a) for a in prefix + step.argv)
        print(f"# [{i}/{len(steps)}] {step.name}")
        if args.dry_run:
            print(line)
            continue
        if os.path.exists(step.done_marker):
            print(f"# done already ({step.done_marker}); skipped")
            continue
        print(line, flush=True)
        # Not every CLI creates its output's folder.
        os.makedirs(os.path.dirname(step.done_marker), exist_ok=True)
        subprocess.run(prefix + step.argv, check=True)
        ran += 1
    if not args.dry_run:
        print(
            f"{row.name}: {ran} stages run, {len(steps) - ran} skipped, "
            f"{time.time() - t0:.0f}s; outputs in {planner.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
