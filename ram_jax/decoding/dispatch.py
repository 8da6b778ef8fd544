"""One running batch, several modes: each row picks its rule from a table.

A server decodes requests that ask for different modes in one batch, so the
models step once for all of them. `PerRow(modes)` is itself a `Mode`: row b
draws with `modes[rows.mode_B[b]]`, and each entry's rule is computed only
when some live row uses it (`lax.cond`), so a table of every mode costs, per
step, the rules in use, not all of them. Rows never mix: a row's token is
exactly what its own mode draws for it (every rule is row-wise).

The models in the batch are the proposal and every aligner the server holds;
a row says which aligners it reads through its weights. Modes that pool the
aligners (`reads_weights`) get them all, and zero weights cancel the unused
ones exactly. Modes that read one aligner (`max_aligners == 1`: `product`,
`mds`) see, per row, the one aligner whose weight is positive (the caller
gives such rows one-hot weights), so their numbers are those of a decode
with that aligner alone.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ram_jax.decoding.modes import Logits, Mode


def _one_aligner(x: Logits, rows) -> Logits:
    """`x` with one aligner per row: the one whose weight is positive (exact selection)."""
    chosen_BxV = x.qs_BxV[0]
    for i, q_BxV in enumerate(x.qs_BxV[1:], start=1):
        chosen_BxV = jnp.where(rows.aligner_weights_BxA[:, i, None] > 0, q_BxV, chosen_BxV)
    return dataclasses.replace(x, qs_BxV=(chosen_BxV,))


@dataclasses.dataclass(frozen=True)
class PerRow(Mode):
    """Row b draws with `modes[rows.mode_B[b]]` (rows with index -1 draw nothing)."""

    name: ClassVar[str] = "per_row"
    max_aligners: ClassVar[int | None] = None
    reads_weights: ClassVar[bool] = True
    modes: tuple[Mode, ...] = ()

    def draw(self, keys_B, x, rows):
        b = keys_B.shape[0]
        tokens_B, shaped_B = jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool)
        for i, mode in enumerate(self.modes):
            use_B = rows.mode_B == i
            view = _one_aligner(x, rows) if mode.max_aligners == 1 and x.qs_BxV else x
            zeros = lambda: (jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
            drawn = lambda mode=mode, view=view: _as(mode.draw(keys_B, view, rows))
            tokens_i, shaped_i = jax.lax.cond(jnp.any(use_B), drawn, zeros)
            tokens_B = jnp.where(use_B, tokens_i, tokens_B)
            shaped_B = jnp.where(use_B, shaped_i, shaped_B)
        return tokens_B, shaped_B


def _as(drawn):
    tokens_B, shaped_B = drawn
    return tokens_B.astype(jnp.int32), shaped_B.astype(bool)
