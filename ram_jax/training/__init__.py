"""Training the aligner: objectives, the sharded train step, the loop, optimizers, checkpoints.

losses      the RAM objectives on sequence log-probabilities (pure `jnp`)
step        train state, its sharded init, the jitted train and eval steps
loop        the run behind `python -m ram_jax.main`
model       the trained model's config, initial params and export, from a config
optim       optax optimizers and schedules from config fields
checkpoint  Orbax checkpoints of (state, data position)
metrics     TensorBoard + JSONL scalars
"""
