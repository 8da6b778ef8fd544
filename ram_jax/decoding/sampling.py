"""Per-request sampling settings, their per-row device arrays, and the reference presets.

`SamplingParams` is what one request asks for (host scalars, validated on
construction). `RowSettings` stacks the requests of a batch into per-row
arrays that travel in the decoder's scan carry, so rows with different
settings share one compiled decoder and a sweep over settings never
recompiles. Which rule turns logits into a token is the mode's business
(`ram_jax.decoding.modes`); these are only its numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FILTER_ORDERS = ("top_k_first", "top_p_first")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. Every field may differ between rows of a batch.

    Output chain (applied to whatever logits the mode finally samples from,
    in the FastChat order of the reference: temperature, repetition penalty,
    then top-p and top-k in `filter_order`):
      temperature: 0 means greedy (argmax after the penalty); must be >= 0.
      top_p: nucleus mass in (0, 1]; 1 disables it.
      top_k: keep the k largest logits; 0 disables it.
      repetition_penalty: HF semantics over prompt and generated ids (a seen
        token's logit is divided by it when positive, multiplied otherwise);
        1 disables it. It acts on the mode's final logits only, never on
        what P's nucleus, the KL gate or the EOS check read.
      filter_order: "top_k_first" (HF generate) or "top_p_first" (the
        reference's FastChat processors).
    Proposal warper (P's nucleus and P's factor in the products; always top-k
    first, as the reference's `top_k_top_p_filtering`):
      proposal_temperature, proposal_top_p, proposal_top_k.
    Mode parameters:
      aligner_temperature: T_Q of `mds` (the reference's expert temperature).
      kl_threshold: `par_kl` takes the `par` branch where KL(P || Q) <= this.
      aligner_weights: one weight >= 0 per aligner (None: 1 each); read by the
        modes that combine aligners (`weighted_product`, and `par`, `par_kl`,
        `aligner`, `sir` through the pooled aligner).
    Length and stopping:
      max_new_tokens: the most tokens generated for this request.
      stop_token_ids: ids that end the response besides the models' EOS ids.
      stop: strings that end the response (checked on the host between
        chunks; the text is cut before the stop string).
      rstrip: strip trailing whitespace from the output text (the reference does).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    proposal_temperature: float = 1.0
    proposal_top_p: float = 1.0
    proposal_top_k: int = 0
    aligner_temperature: float = 1.0
    repetition_penalty: float = 1.0
    kl_threshold: float = 0.1
    aligner_weights: tuple[float, ...] | None = None
    filter_order: str = "top_k_first"
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    rstrip: bool = False

    def __post_init__(self):
        # Lists from flags or JSON become tuples, so the params stay hashable.
        for name in ("aligner_weights", "stop_token_ids", "stop"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        problems = []
        for name in ("temperature", "proposal_temperature", "aligner_temperature"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                problems.append(f"{name}={value} must be >= 0 (0 means greedy)")
        for name in ("top_p", "proposal_top_p"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                problems.append(f"{name}={value} must lie in (0, 1] (1 disables top-p)")
        for name in ("top_k", "proposal_top_k"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0 (0 disables it)")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0")
        if not self.kl_threshold >= 0:
            problems.append(f"kl_threshold={self.kl_threshold} must be >= 0")
        if self.aligner_weights is not None:
            bad = [w for w in self.aligner_weights if not (math.isfinite(w) and w >= 0)]
            if bad or not self.aligner_weights:
                problems.append(
                    f"aligner_weights={self.aligner_weights} must be one finite weight >= 0 "
                    "per aligner"
                )
        if self.filter_order not in FILTER_ORDERS:
            problems.append(f"filter_order={self.filter_order!r} is not one of {FILTER_ORDERS}")
        if int(self.max_new_tokens) < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if any(int(t) < 0 for t in self.stop_token_ids):
            problems.append(f"stop_token_ids={self.stop_token_ids} must be token ids >= 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop={self.stop} must be non-empty strings")
        if problems:
            raise ValueError("bad sampling parameters: " + "; ".join(problems) + ".")

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    def weights(self, num_aligners: int) -> tuple[float, ...]:
        """The aligner weights for `num_aligners` aligners (checked)."""
        if self.aligner_weights is None:
            return (1.0,) * num_aligners
        if len(self.aligner_weights) != num_aligners:
            raise ValueError(
                f"aligner_weights={self.aligner_weights} has {len(self.aligner_weights)} "
                f"weights for {num_aligners} aligners; give one weight per aligner."
            )
        return tuple(float(w) for w in self.aligner_weights)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RowSettings:
    """`SamplingParams` of every row as arrays (A = aligners, E = stop-id slots).

    They live in the decoder's carry, so a slot of a running batch can take a
    new request's settings without recompiling. `stop_ids_BxE` holds each
    row's EOS and stop ids, padded with -1; `mode_B` each row's entry in a
    per-row mode table (`ram_jax.decoding.dispatch`; other modes ignore it).
    """

    temperature_B: jax.Array
    top_p_B: jax.Array
    top_k_B: jax.Array
    top_k_first_B: jax.Array
    proposal_temperature_B: jax.Array
    proposal_top_p_B: jax.Array
    proposal_top_k_B: jax.Array
    aligner_temperature_B: jax.Array
    repetition_penalty_B: jax.Array
    kl_threshold_B: jax.Array
    aligner_weights_BxA: jax.Array
    max_new_tokens_B: jax.Array
    stop_ids_BxE: jax.Array
    mode_B: jax.Array

    @staticmethod
    def stack(
        params: Sequence[SamplingParams],
        num_aligners: int,
        eos_ids: Sequence[int] = (),
        *,
        modes: Sequence[int] | None = None,
        stop_width: int | None = None,
    ) -> RowSettings:
        """Per-row arrays of `params` (one per row); every row also stops on `eos_ids`.

        `modes`: each row's index into a per-row mode table (`decoding.dispatch`;
        default 0). `stop_width`: the E of `stop_ids_BxE` (default: the next power
        of two that holds every row's ids), fixed where rows join a running batch.
        """
        stops = [tuple(dict.fromkeys([*eos_ids, *p.stop_token_ids])) for p in params]
        # Powers of two: a request with one more stop id rarely changes the shape.
        width = 1 << max(2, math.ceil(math.log2(max(1, *map(len, stops)))))
        if stop_width is not None:
            if max(map(len, stops)) > stop_width:
                raise ValueError(
                    f"{max(map(len, stops))} stop ids (EOS included) exceed the {stop_width} "
                    "this batch holds per row; send fewer stop_token_ids."
                )
            width = int(stop_width)
        stop_ids = np.full((len(params), width), -1, np.int32)
        for i, ids in enumerate(stops):
            stop_ids[i, : len(ids)] = ids
        col = lambda name, dtype: np.asarray([getattr(p, name) for p in params], dtype)
        weights = [p.weights(num_aligners) for p in params]
        return RowSettings(
            temperature_B=col("temperature", np.float32),
            top_p_B=col("top_p", np.float32),
            top_k_B=col("top_k", np.int32),
            top_k_first_B=np.asarray([p.filter_order == "top_k_first" for p in params]),
            proposal_temperature_B=col("proposal_temperature", np.float32),
            proposal_top_p_B=col("proposal_top_p", np.float32),
            proposal_top_k_B=col("proposal_top_k", np.int32),
            aligner_temperature_B=col("aligner_temperature", np.float32),
            repetition_penalty_B=col("repetition_penalty", np.float32),
            kl_threshold_B=col("kl_threshold", np.float32),
            aligner_weights_BxA=np.asarray(weights, np.float32).reshape(len(params), -1),
            max_new_tokens_B=col("max_new_tokens", np.int32),
            stop_ids_BxE=stop_ids,
            mode_B=np.zeros(len(params), np.int32)
            if modes is None
            else np.asarray(modes, np.int32),
        )

    def is_stop(self, tokens_B: jax.Array) -> jax.Array:
        """Whether each row's token is one of that row's EOS / stop ids."""
        return jnp.any(tokens_B[:, None] == self.stop_ids_BxE, axis=-1)


# The reference implementation's decode settings (RAM.md section 3): par_kl with
# tau 0.1, aligner top-p 0.9, proposal top-p 0.95, repetition penalty 1.05 and
# FastChat's processor order; 1024 new tokens, stop at "\n\nHuman", the output
# right-stripped. Temperatures are per task: see PAPER_TEMPERATURES. The mode
# side of the preset (par's EOS rule) is `modes.reference_mode`.
REFERENCE_STOPS = ("\n\nHuman",)
REFERENCE = SamplingParams(
    temperature=0.7,
    top_p=0.9,
    proposal_temperature=0.5,
    proposal_top_p=0.95,
    repetition_penalty=1.05,
    kl_threshold=0.1,
    filter_order="top_p_first",
    max_new_tokens=1024,
    stop=REFERENCE_STOPS,
    rstrip=True,
)

# How the reference samples the aligner's negatives y~ ~ P(.|x) offline (RAM.md
# section 2): the proposal alone at T 0.5, top-p 0.95, repetition penalty 1.05,
# FastChat's processor order; stop at "\n\nHuman".
REFERENCE_NEGATIVES = SamplingParams(
    temperature=0.5,
    top_p=0.95,
    repetition_penalty=1.05,
    filter_order="top_p_first",
    stop=REFERENCE_STOPS,
)

# (aligner family, task) -> (aligner T, proposal T_P) selected in the paper.
PAPER_TEMPERATURES: dict[tuple[str, str], tuple[float, float]] = {
    ("llama", "ultrachat"): (0.7, 0.5),
    ("llama", "tldr"): (0.3, 0.5),
    ("llama", "hh_helpful"): (0.5, 0.7),
    ("llama", "hh_harmless"): (0.3, 0.7),
    ("qwen", "ultrachat"): (0.3, 0.7),
    ("qwen", "tldr"): (0.3, 0.5),
    ("qwen", "hh_helpful"): (0.7, 0.5),
    ("qwen", "hh_harmless"): (0.3, 0.5),
}


def reference_sampling(family: str | None = None, task: str | None = None, **changes):
    """`REFERENCE`, with the paper's temperatures for (family, task) if given."""
    if (family is None) != (task is None):
        raise ValueError("pass both family and task (e.g. 'llama', 'tldr') or neither.")
    if family is not None:
        if (family, task) not in PAPER_TEMPERATURES:
            raise ValueError(
                f"no paper setting for family={family!r}, task={task!r}; "
                f"known: {sorted(PAPER_TEMPERATURES)}."
            )
        t, tp = PAPER_TEMPERATURES[(family, task)]
        changes = {"temperature": t, "proposal_temperature": tp, **changes}
    return REFERENCE.replace(**changes)
