"""Turning validated rows into token sequences, grouped per example.

Each example becomes G sequences `prompt + response + EOS` sharing one prompt
(group layout: `ram_jax.training.losses`). Prompts are templated, tokenized without
special tokens and left-truncated to `max_prompt_length` (their end, next to
the response, is kept); responses get the EOS appended and are cut so the
whole sequence fits `max_length` (RAM.md section 2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tokenizers import Tokenizer

from ram_jax.data import templates
from ram_jax.data.rows import DataError, Row
from ram_jax.training.losses import Objective


@dataclasses.dataclass(frozen=True)
class Examples:
    """Tokenized examples: `sequences[i][g]` int32 ids; `prompt_lengths[i]` shared by the group."""

    sequences: list[list[np.ndarray]]
    prompt_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def group_size(self) -> int:
        return len(self.sequences[0]) if self.sequences else 0


def responses_for(row: Row, objective: Objective, negatives: str) -> list[str]:
    """[target, *others] responses of a row, as the objective lays out its group."""
    field = objective.second_field
    if field is None:
        return [row.chosen]
    if field == "rejected" or negatives == "rejected":
        if row.rejected is None:
            raise DataError(f"{row.where}: row has no 'rejected' response, which is needed here.")
        others = [row.rejected] * (objective.group_size - 1)
        if objective.name == "ram_mc" and objective.num_samples > 1:
            raise DataError(
                f"{row.where}: ram_mc with num_samples={objective.num_samples} needs K proposal "
                "samples per row ('sampling'); 'rejected' holds only one."
            )
        return [row.chosen, *others]
    if negatives != "sampling":
        raise ValueError(f"objective.negatives={negatives!r}: use 'sampling' or 'rejected'.")
    k = objective.group_size - 1
    if len(row.sampling) < k:
        raise DataError(
            f"{row.where}: {objective.name} needs {k} proposal sample(s) per row in "
            f"'sampling', the row has {len(row.sampling)}; resample with "
            f"`python -m ram_jax.sample_proposal --num_samples={k}`."
        )
    return [row.chosen, *row.sampling[:k]]


def required_fields(objective: Objective, negatives: str) -> tuple[str, ...]:
    """Row fields beyond prompt/chosen that `objective` reads."""
    if objective.second_field is None:
        return ()
    if objective.second_field == "rejected" or negatives == "rejected":
        return ("rejected",)
    return ("sampling",)


def tokenize_rows(
    rows: list[Row],
    tok: Tokenizer,
    objective: Objective,
    *,
    eos_id: int,
    max_length: int,
    max_prompt_length: int,
    negatives: str = "sampling",
    prompt_template: str = "{prompt}",
    bos_id: int | None = None,
    chat_template: str | None = None,
    special_tokens: dict[str, str] | None = None,
) -> Examples:
    """Tokenizes rows into `Examples` (see module docstring).

    `bos_id`, `chat_template` and `special_tokens` are passed to
    `templates.encode_prompts` (the last two matter for the `chat` template).
    """
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length}) so "
            "every response keeps at least one token."
        )
    if templates.resolve(prompt_template) != templates.CHAT:
        for r in rows:
            if not isinstance(r.prompt, str):
                raise DataError(
                    f"{r.where}: the prompt is a conversation (messages), which only the 'chat' "
                    f"template renders; set data.prompt_template='chat' (got {prompt_template!r})."
                )
    groups = [responses_for(r, objective, negatives) for r in rows]
    prompt_ids = templates.encode_prompts(
        tok,
        [r.prompt for r in rows],
        prompt_template,
        bos_id=bos_id,
        max_length=max_prompt_length,
        chat_template=chat_template,
        special_tokens=special_tokens,
    )
    flat = [resp for g in groups for resp in g]
    response_ids = tok.encode_batch(flat, add_special_tokens=False)
    sequences, lengths, j = [], [], 0
    for ids in prompt_ids:
        group = []
        for _ in range(objective.group_size):
            resp = response_ids[j].ids + [eos_id]
            j += 1
            group.append(np.asarray(ids + resp[: max_length - len(ids)], np.int32))
        sequences.append(group)
        lengths.append(len(ids))
    return Examples(sequences, np.asarray(lengths, np.int32))
