"""Composable aligners: `P prod_i Q_i^w_i` at the token level, one mode class.

Each aligner is a separately trained residual for one behaviour; its weight
is the alignment strength, per row. The rule is `product`'s with the aligner
term replaced by a weighted sum:

    process_1(log softmax(warp_P(p)) + sum_i w_i log softmax(q_i / T))

so `w = 0` leaves P's nucleus distribution (with T_P = T, P's nucleus off and
no repetition penalty this is `proposal`'s `process(p)`), and one aligner at
`w = 1` is `product` computed by the same operations. Everything else
(registration, validation, the decoder) comes from `Mode`: this file is the
whole extension.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from ram_jax.decoding import modes


@modes.register
@dataclasses.dataclass(frozen=True)
class WeightedProduct(modes.Mode):
    """`P prod_i Q_i^w_i` on P's nucleus, T acting on every aligner, weights per row."""

    name: ClassVar[str] = "weighted_product"
    max_aligners: ClassVar[int | None] = None
    reads_weights: ClassVar[bool] = True

    def logits(self, x, rows, gate_B):
        w_BxA = rows.aligner_weights_BxA
        log_q_BxV = 0.0
        for i, q_BxV in enumerate(x.qs_BxV):
            w_Bx1 = w_BxA[:, i, None]
            # A zero weight cancels its aligner exactly, whatever its logits.
            term = jnp.where(w_Bx1 > 0, w_Bx1 * modes.aligner_log_probs(q_BxV, rows), 0.0)
            log_q_BxV = log_q_BxV + term
        shaped_B = jnp.any(w_BxA > 0, axis=-1)
        return modes.product_logits(x, rows, log_q_BxV), shaped_B
