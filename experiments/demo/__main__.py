r"""The embedded end-to-end RAM experiment: `python -m experiments.demo`.

  python -m experiments.demo [--out=runs/demo] [--quick] [--seeds=3] [--world_seed=0]

Builds a synthetic world, pre-trains a proposal on it, trains a residual
aligner (ram_sft, ram_dpo, ram_mc) and the baselines (proposal alone, small
model alone, fine-tuned proposal, Aligner-style corrector), decodes every
method, and writes OUT/results.json, OUT/results.md and PNG plots. Everything
runs on this machine's CPU with nothing to download. `--quick` is the CI-sized
run (one seed by default, fewer modes); the full run takes 3 seeds.
"""

import os

from absl import app, flags, logging

_OUT = flags.DEFINE_string("out", "runs/demo", "Run directory (created; reruns overwrite).")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized run: smaller world, fewer steps and modes.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds to average over (default: 1 quick, 3 full).")
_WORLD_SEED = flags.DEFINE_integer(
    "world_seed", 0, "Seed of the world and the proposal (built once per run)."
)
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "ram_jax", "jax_compilation_cache"),
    "JAX persistent compilation cache ('' disables). Seeds after the first, and reruns, "
    "reuse the compiled train and decode steps instead of recompiling each stage.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --out, --quick, --seeds.")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Per-save checkpoint INFO lines would drown the stage progress.
    logging.set_verbosity(logging.WARNING)
    import jax

    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
        # The demo's programs compile in about a second each; cache them all.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from experiments.demo import pipeline

    seeds = _SEEDS.value if _SEEDS.value is not None else (1 if _QUICK.value else 3)
    plan = pipeline.Plan.make(_OUT.value, _QUICK.value, seeds, world_seed=_WORLD_SEED.value)
    pipeline.run(plan)


if __name__ == "__main__":
    app.run(main)
