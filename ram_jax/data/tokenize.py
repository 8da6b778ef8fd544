"""Turning validated rows into token sequences, grouped per example.

Each example becomes G sequences `prompt + response + EOS` sharing one prompt
(group layout: `ram_jax.training.losses`). Prompts are templated, tokenized without
special tokens and left-truncated to `max_prompt_length` (their end, next to
the response, is kept); responses get the EOS appended and are cut so the
whole sequence fits `max_length` (RAM.md section 2).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ram_jax.data import templates
from ram_jax.data.rows import DataError, Row

if TYPE_CHECKING:  # the data pipeline itself never needs JAX
    from tokenizers import Tokenizer

    from ram_jax.training.losses import Objective


@dataclasses.dataclass(frozen=True)
class Examples:
    """Tokenized examples: `sequences[i][g]` int32 ids; `prompt_lengths[i]` shared by the group."""

    sequences: list[list[np.ndarray]]
    prompt_lengths: np.ndarray
    # What `max_prompt_length` / `max_length` cut, per example (None: not recorded).
    prompt_cut: np.ndarray | None = None  # bool: the prompt lost its beginning
    response_cut: np.ndarray | None = None  # bool: a response lost its end (and its EOS)
    full_lengths: np.ndarray | None = None  # int: the longest sequence before cutting

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def group_size(self) -> int:
        return len(self.sequences[0]) if self.sequences else 0

    def response_lengths(self) -> np.ndarray:
        """`[N, G]` response tokens per sequence (EOS included), after cutting."""
        return np.asarray(
            [
                [len(s) - p for s in g]
                for g, p in zip(self.sequences, self.prompt_lengths, strict=True)
            ],
            np.float64,
        ).reshape(len(self), self.group_size)


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
    prompts = [r.prompt for r in rows]
    prompt_ids = templates.encode_prompts(
        tok,
        prompts,
        prompt_template,
        bos_id=bos_id,
        max_length=max_prompt_length,
        chat_template=chat_template,
        special_tokens=special_tokens,
    )
    # Untruncated prompt lengths, only to report what the cut removed.
    full_prompts = [
        len(p)
        for p in templates.encode_prompts(
            tok,
            prompts,
            prompt_template,
            bos_id=bos_id,
            chat_template=chat_template,
            special_tokens=special_tokens,
        )
    ]
    flat = [resp for g in groups for resp in g]
    response_ids = tok.encode_batch(flat, add_special_tokens=False)
    sequences, lengths, response_cut, full_lengths, j = [], [], [], [], 0
    for ids, full_prompt in zip(prompt_ids, full_prompts, strict=True):
        group, cut, longest = [], False, 0
        for _ in range(objective.group_size):
            resp = response_ids[j].ids + [eos_id]
            j += 1
            room = max_length - len(ids)
            cut |= len(resp) > room
            longest = max(longest, full_prompt + len(resp))
            group.append(np.asarray(ids + resp[:room], np.int32))
        sequences.append(group)
        lengths.append(len(ids))
        response_cut.append(cut)
        full_lengths.append(longest)
    return Examples(
        sequences,
        np.asarray(lengths, np.int32),
        prompt_cut=np.asarray(full_prompts) > np.asarray(lengths),
        response_cut=np.asarray(response_cut, bool),
        full_lengths=np.asarray(full_lengths, np.int64),
    )


def check_truncation(
    examples: Examples,
    rows: list[Row],
    *,
    max_length: int,
    max_prompt_length: int,
    limit: float,
    what: str = "data.train_file",
) -> str:
    """Reports what the length limits cut; raises DataError if responses lost their end too often.

    A cut prompt keeps its end (the reference's left truncation), so it is
    only reported. A cut response loses its EOS, so the model never sees that
    answer end: more than `limit` (a fraction of the examples) is refused.
    Returns the one-line report ('' when nothing was cut).
    """
    n = len(examples)
    prompts = int(np.sum(examples.prompt_cut))
    responses = int(np.sum(examples.response_cut))
    if not prompts and not responses:
        return ""
    first = rows[int(np.argmax(examples.response_cut if responses else examples.prompt_cut))]
    report = (
        f"{what}: {responses} of {n} examples ({responses / n:.1%}) had a response cut at "
        f"data.max_length={max_length} (its end-of-answer token lost), and {prompts} "
        f"({prompts / n:.1%}) a prompt cut to its last data.max_prompt_length="
        f"{max_prompt_length} tokens; first at {first.where}; the longest example needs "
        f"{int(np.max(examples.full_lengths))} tokens."
    )
    if responses / n > limit:
        raise DataError(
            f"{report} That is above data.max_truncated_fraction={limit}: raise data.max_length "
            "(and data.max_prompt_length), or accept the cuts with "
            f"--config.data.max_truncated_fraction={responses / n:.2f}."
        )
    return report
