"""Training the aligner: objectives, the sharded train step, the loop, optimizers, checkpoints.

losses      the RAM objectives on sequence log-probabilities (pure `jnp`)
step        train state, its sharded init, the jitted train and eval steps
loop        the run behind `python -m ram_jax.main`
model       the trained model's config, initial params and export, from a config
optim       optax optimizers and schedules from config fields
checkpoint  Orbax checkpoints of (state, data position), verified, with fallback
integrity   checksum manifests of checkpoint steps
metrics     TensorBoard + JSONL scalars, continued without repeats on resume
preflight   config and workdir checks that run before JAX is imported
resume      SIGTERM / Ctrl-C stops, finished workdirs
workdir_lock  one run per workdir
diagnostics warnings for runs that train nothing, non-finite loss messages
"""
