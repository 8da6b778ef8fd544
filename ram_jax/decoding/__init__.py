"""Decoding P and Q together: token rules, RAM modes, the jitted decoder, streaming, batching.

sampling    `SamplingConfig` and the pure `jnp` logit processors (token rules)
modes       how each RAM mode draws the next token from P's and Q's logits
decoder     prefill both models, then one `lax.scan` stepping both; `generate`
until_done  the decoder as a `while_loop` that exits when every row is done
stream      the decoder in chunks, tokens reaching the host as they are made
batching    host-side prompt templates, buckets, left padding, texts out
"""
