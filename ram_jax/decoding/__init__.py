"""Decoding P and the aligners together: settings, token rules, modes, the decoder, the driver.

sampling    `SamplingParams` (one request's settings), `RowSettings` (their per-row
            arrays in the decoder's carry), the reference presets
processors  pure `jnp` logit processors with per-row settings (token rules)
modes       the RAM modes as small registered rule objects (`Mode`, `MODES`)
compose     `weighted_product`: several aligners, `P prod_i Q_i^w_i` (one mode class)
dispatch    `PerRow`: a table of modes, each row drawing with its own (one batch, many modes)
decoder     the jitted core: prefill + first token, then chunks of steps
driver      the host entry point: prompts in, a `DecodeRecord` out, chunks streamed
record      `DecodeRecord`, its host buffers, response texts and decode metrics
resample    `seq_sir`: one of N candidates per prompt, resampled by Q(y|x)
batching    host-side buckets, left padding, prompt checks, stop strings
files       decoding from files: models from directories, prompts in, outputs written
"""

from ram_jax.decoding import compose  # noqa: F401  (registers `weighted_product`)
