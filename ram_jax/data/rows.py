"""Training rows: their three layouts (rows, messages, Anthropic HH) and their validation.

Three layouts are accepted:

  rows      {"prompt": str | messages, "chosen": str, "rejected"?: str,
             "sampling"?: str | [str, ...]}
            `sampling` holds one or K responses sampled offline from the proposal
            (see `ram_jax.sample_proposal`).
  messages  {"messages": [{"role": ..., "content": ...}, ..., {"role": "assistant",
             "content": chosen}], "rejected"?: str, "sampling"?: ...} (UltraChat's
            own format): the prompt is the conversation before the last message,
            which must be the assistant's; rendered by the `chat` template.
  hh        Anthropic HH-RLHF: {"chosen": conversation, "rejected": conversation};
            the prompt is everything up to the last "\\n\\nAssistant: ", that
            space included (as the reference splits), which `rejected` must
            share; the responses are the remainders.

Every problem is reported with the file and line (`ram_jax.io` reads the files).
An HH pair whose two conversations differ before the last assistant turn is
no preference between two responses: it is dropped, counted and reported
(`split_hh_pair`; the tfds builder applies the same rule).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging

from ram_jax.data.chat_template import check_messages
from ram_jax.io import DataError

HH_ASSISTANT = "\n\nAssistant:"
FORMATS = ("auto", "rows", "messages", "hh")


@dataclasses.dataclass(frozen=True)
class Row:
    """One training example, before templating and tokenization.

    `prompt` is a string, or a conversation (a tuple of message dicts) for
    the `chat` template.
    """

    prompt: str | tuple[dict, ...]
    chosen: str
    rejected: str | None = None
    sampling: tuple[str, ...] = ()
    where: str = ""  # 'file:line', for error messages downstream
    source: Any = dataclasses.field(default=None, compare=False, repr=False)  # the JSON object


class MismatchedPair(DataError):
    """An HH pair whose conversations differ before the last response."""


def _text(obj: dict, key: str, where: str, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(
                f"{where}: row has no {key!r} field (fields: {sorted(obj)}); every row needs "
                f"{key!r} for this objective / format."
            )
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}.")
    return value


def split_hh(conversation: str, where: str) -> tuple[str, str]:
    """(prompt ending in '\\n\\nAssistant: ', final response) of an HH conversation.

    The space after the last "\\n\\nAssistant:" stays in the prompt, as the
    reference splits (at "\\n\\nAssistant: "), so the boundary token matches
    its training and decoding; a turn with no space (an empty final response)
    ends the prompt at the colon.
    """
    cut = conversation.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: HH conversation has no {HH_ASSISTANT!r} turn.")
    cut += len(HH_ASSISTANT)
    if conversation[cut : cut + 1] == " ":
        cut += 1
    return conversation[:cut], conversation[cut:]


def split_hh_pair(chosen: str, rejected: str | None, where: str) -> tuple[str, str, str | None]:
    """(prompt, chosen response, rejected response) of an HH pair.

    Raises `MismatchedPair` when the two conversations differ before their
    last assistant turn (a known quirk of a few HH rows); callers drop and
    count such pairs.
    """
    prompt, chosen_response = split_hh(chosen, f"{where} (chosen)")
    if rejected is None:
        return prompt, chosen_response, None
    r_prompt, rejected_response = split_hh(rejected, f"{where} (rejected)")
    if r_prompt != prompt:
        raise MismatchedPair(
            f"{where}: HH 'chosen' and 'rejected' conversations differ before the last "
            "assistant turn; they must share the prompt."
        )
    return prompt, chosen_response, rejected_response


def parse_row(obj, where: str, fmt: str = "auto", need: tuple[str, ...] = ()) -> Row:
    """Validates one parsed JSON object into a `Row`.

    Args:
      obj: the parsed JSON value.
      where: 'file:line' for messages.
      fmt: 'rows', 'messages', 'hh' or 'auto' (messages when the object has
        'messages' and no 'chosen', else rows when it has 'prompt', else hh).
      need: fields the objective requires beyond prompt/chosen
        ('rejected' and/or 'sampling').
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: each row must be a JSON object, got {type(obj).__name__}.")
    if fmt == "auto":
        if "messages" in obj and "chosen" not in obj:
            fmt = "messages"
        else:
            fmt = "rows" if "prompt" in obj else "hh"
    if fmt == "messages":
        prompt, chosen = _split_messages(obj.get("messages"), where)
        rejected = _text(obj, "rejected", where, "rejected" in need)
        return Row(prompt, chosen, rejected, _samples(obj, where, "sampling" in need), where, obj)
    if fmt == "hh":
        chosen_conv = _text(obj, "chosen", where, True)
        rejected_conv = _text(obj, "rejected", where, "rejected" in need)
        prompt, chosen, rejected = split_hh_pair(chosen_conv, rejected_conv, where)
        samples = _samples(obj, where, "sampling" in need)
        return Row(prompt, chosen, rejected, samples, where, obj)
    if fmt != "rows":
        raise ValueError(f"data.format={fmt!r}: use one of {FORMATS}.")
    prompt = obj.get("prompt")
    return Row(
        prompt=_conversation(prompt, where)
        if isinstance(prompt, list)
        else _text(obj, "prompt", where, True),
        chosen=_text(obj, "chosen", where, True),
        rejected=_text(obj, "rejected", where, "rejected" in need),
        sampling=_samples(obj, where, "sampling" in need),
        where=where,
        source=obj,
    )


def _conversation(messages, where: str) -> tuple[dict, ...]:
    try:
        return tuple(check_messages(messages, where))
    except ValueError as e:
        raise DataError(str(e)) from None


def _split_messages(messages, where: str) -> tuple[tuple[dict, ...], str]:
    """(the conversation before the last message, the last message's content)."""
    conversation = _conversation(messages, f"{where}: 'messages'")
    last = conversation[-1]
    if last["role"] != "assistant" or not isinstance(last.get("content"), str):
        raise DataError(
            f"{where}: the last message must be the assistant's response (a string 'content'), "
            f"got role {last['role']!r}; it is the target the model is trained on."
        )
    if len(conversation) < 2:
        raise DataError(f"{where}: 'messages' holds a response but no prompt before it.")
    return conversation[:-1], last["content"]


def _samples(obj: dict, where: str, required: bool) -> tuple[str, ...]:
    value = obj.get("sampling")
    if value is None:
        if required:
            raise DataError(
                f"{where}: row has no 'sampling' field (proposal samples), which this objective "
                "needs; create it with `python -m ram_jax.sample_proposal`, or set "
                "objective.negatives='rejected' to use the rejected responses."
            )
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value) or not value:
        raise DataError(f"{where}: 'sampling' must be a string or a non-empty list of strings.")
    return tuple(value)


def rows_from(records, source: str, fmt: str = "auto", need: tuple[str, ...] = ()) -> list[Row]:
    """Validated rows of `(where, object)` records; raises `DataError` naming file:line.

    HH pairs whose conversations differ before the last turn are dropped
    with a warning that counts them and names the first.
    """
    rows, dropped = [], []
    for where, obj in records:
        try:
            rows.append(parse_row(obj, where, fmt, need))
        except MismatchedPair as e:
            dropped.append(str(e))
    if dropped:
        logging.warning(
            "%s: dropped %d HH pair(s) whose conversations differ before the last response "
            "(first: %s)",
            source,
            len(dropped),
            dropped[0],
        )
    if not rows:
        raise DataError(f"{source}: the file holds no rows; the dataset is empty.")
    return rows
