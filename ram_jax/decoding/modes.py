"""RAM decoding modes: how the next token is drawn from the logits of P and Q.

`p` and `q` are the proposal's and the aligner's float32 logits for the same
prefix, sliced to the tokenizer length, after the repetition penalty. The
output warper (`temperature`, `top_p`, `top_k`) and the proposal warper
(`proposal_*`) are those of `SamplingConfig`. Per mode (RAM.md section 3):

  proposal  output_warper(p)
  aligner   output_warper(q)
  product   output_warper-filtered `log softmax(proposal_warper(p)) + log softmax(q / T)`:
            the exact token-level product (the reference's "mds") on P's nucleus
  par       output_warper(q restricted to nucleus(proposal_warper(p))); with
            `eos_priority`, emit EOS when P's argmax is an EOS id
  par_kl    per row: `par` (no EOS priority) where KL(softmax(p)||softmax(q)) <= tau,
            else output_warper(p)
  sir       n i.i.d. candidates from softmax(proposal_warper(p)), resampled with
            weights softmax(q / T)[candidate]; tends to `product` restricted to
            P's nucleus as n grows
  seq_sir   decodes N rows per prompt with the proposal warper (see
            `decode.generate`) and resamples one by `resample_sequences`.

Each rule returns the sampled tokens and a per-row flag saying whether the
aligner shaped the token (for `par_kl`: the `par` branch was taken).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ram_jax.decoding import sampling as S


def _is_eos(tokens_B: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens_B.shape, bool)
    return jnp.isin(tokens_B, jnp.asarray(eos_ids, jnp.int32))


def _restrict_to_nucleus(p_BxV, q_BxV, cfg: S.SamplingConfig) -> jax.Array:
    """q with every token outside P's nucleus (the proposal warper's support) removed."""
    return S.restrict(q_BxV, jnp.isfinite(cfg.proposal_warper()(p_BxV)))


def _par_logits(p_BxV, q_BxV, cfg: S.SamplingConfig) -> jax.Array:
    return cfg.output_warper()(_restrict_to_nucleus(p_BxV, q_BxV, cfg))


def _sir(keys_B, p_BxV, q_BxV, cfg: S.SamplingConfig) -> jax.Array:
    n = cfg.num_candidates
    draw_keys, pick_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys_B), 1, 0)
    cand_BxC = S.draw_from_cdf(draw_keys, cfg.proposal_warper()(p_BxV), n)
    if cfg.temperature == 0:
        weights_BxC = jnp.take_along_axis(q_BxV, cand_BxC, axis=-1)
        pick_B = jnp.argmax(weights_BxC, axis=-1)
    else:
        log_w_BxV = jax.nn.log_softmax(q_BxV / cfg.temperature, axis=-1)
        log_w_BxC = jnp.take_along_axis(log_w_BxV, cand_BxC, axis=-1)
        pick_B = jax.vmap(jax.random.categorical)(pick_keys, log_w_BxC)
    return jnp.take_along_axis(cand_BxC, pick_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def next_token(
    keys_B: jax.Array,
    p_BxV: jax.Array | None,
    q_BxV: jax.Array | None,
    cfg: S.SamplingConfig,
    eos_ids: tuple[int, ...] = (),
    kl_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row under `cfg.mode`; returns `(tokens_B, aligner_branch_B)`.

    `p_BxV`/`q_BxV` may be None when the mode does not read them. `seq_sir`
    draws its proposals here as `proposal` mode with the proposal warper.
    `kl_B` is `par_kl`'s gate statistic; the decoder passes the KL of the raw
    model logits (before the repetition penalty); default: from `p`, `q`.
    """
    greedy = cfg.temperature == 0
    mode = cfg.mode
    rows = (p_BxV if p_BxV is not None else q_BxV).shape[0]
    yes, no = jnp.ones((rows,), bool), jnp.zeros((rows,), bool)
    if mode == "proposal":
        return S.sample(keys_B, cfg.output_warper()(p_BxV), greedy), no
    if mode == "seq_sir":
        greedy_p = cfg.proposal_temperature == 0
        return S.sample(keys_B, cfg.proposal_warper()(p_BxV), greedy_p), no
    if mode == "aligner":
        return S.sample(keys_B, cfg.output_warper()(q_BxV), greedy), yes
    if mode == "product":
        log_p = jax.nn.log_softmax(cfg.proposal_warper()(p_BxV), axis=-1)
        log_q = jax.nn.log_softmax(S.apply_temperature(q_BxV, cfg.temperature or 1.0), axis=-1)
        if greedy:
            return S.sample(keys_B, log_p + log_q, True), yes
        out = S.Warper(1.0, cfg.top_p, cfg.top_k, cfg.filter_order)
        return S.sample(keys_B, out(log_p + log_q), False), yes
    if mode == "par":
        tokens_B = S.sample(keys_B, _par_logits(p_BxV, q_BxV, cfg), greedy)
        if cfg.eos_priority and eos_ids:
            p_top_B = jnp.argmax(p_BxV, axis=-1).astype(jnp.int32)
            tokens_B = jnp.where(_is_eos(p_top_B, eos_ids), p_top_B, tokens_B)
        return tokens_B, yes
    if mode == "par_kl":
        if kl_B is None:
            kl_B = S.kl_divergence(p_BxV, q_BxV)
        use_par_B = kl_B <= cfg.kl_threshold
        # The output warper is row-wise, so it runs once, on each row's chosen logits;
        # P's nucleus is computed only when some row takes the `par` branch.
        chosen_BxV = jax.lax.cond(
            jnp.any(use_par_B),
            lambda: jnp.where(use_par_B[:, None], _restrict_to_nucleus(p_BxV, q_BxV, cfg), p_BxV),
            lambda: p_BxV,
        )
        return S.sample(keys_B, cfg.output_warper()(chosen_BxV), greedy), use_par_B
    if mode == "sir":
        return _sir(keys_B, p_BxV, q_BxV, cfg), yes
    raise ValueError(f"unknown mode {mode!r}; choose from {S.MODES}.")


def resample_sequences(prompt_keys_B: jax.Array, seq_logq_BxC: jax.Array) -> jax.Array:
    """`seq_sir`'s last step: per prompt, the index of one of its C candidates.

    Candidate j of prompt i is drawn with probability `softmax(seq_logq_BxC[i])[j]`,
    i.e. proportional to the aligner's sequence probability Q(y_j|x), with the
    prompt's own key.
    """
    return jax.vmap(jax.random.categorical)(prompt_keys_B, seq_logq_BxC).astype(jnp.int32)
