"""Inputs of the Aligner baseline (Ji et al. 2024): answer-conditioned correction prompts.

The Aligner is a sequence-level corrector: it reads the prompt and the
proposal's whole answer, then writes a corrected answer. The reference builds
its input as "{templated prompt}{proposal answer}\\n\\nCorrection: " and trains
it in two steps: a warm-up that copies the proposal answer (target = the
answer itself, about 10K rows), then the correction task (target = the
dataset's chosen response). At evaluation the proposal answers the eval
prompts first, then the Aligner rewrites each answer.
"""

from __future__ import annotations

from ram_jax.data import templates

CORRECTION_SUFFIX = "\n\nCorrection: "


def correction_prompt(prompt: str, answer: str, template: str = "{prompt}") -> str:
    """The Aligner's input for one templated prompt and one proposal answer."""
    return templates.apply(template, prompt) + answer + CORRECTION_SUFFIX


def correction_rows(
    rows, *, template: str = "{prompt}", target: str = "chosen", answer: str = "auto"
):
    """Training rows of the Aligner from rows carrying a proposal answer.

    `answer`: 'sampling' (the first offline proposal sample), 'rejected'
    (Anthropic-HH, as the reference does) or 'auto' (sampling if present,
    else rejected). `target`: 'chosen' (correction training) or 'answer'
    (the warm-up copy task).
    """
    if target not in ("chosen", "answer"):
        raise ValueError(f"target={target!r}: use 'chosen' or 'answer'.")
    for i, row in enumerate(rows):
        if answer == "sampling" or (answer == "auto" and row.get("sampling")):
            samples = row.get("sampling") or []
            proposal = samples if isinstance(samples, str) else (samples[0] if samples else None)
        elif answer in ("rejected", "auto"):
            proposal = row.get("rejected")
        else:
            raise ValueError(f"answer={answer!r}: use 'sampling', 'rejected' or 'auto'.")
        if not proposal:
            raise ValueError(
                f"row {i}: no proposal answer ({answer}); sample the proposal first "
                "(python -m ram_jax.sample_proposal) or use rows with 'rejected'."
            )
        yield {
            "prompt": correction_prompt(row["prompt"], proposal, template),
            "chosen": proposal if target == "answer" else row["chosen"],
        }


def correction_eval_prompts(outputs, *, template: str = "{prompt}"):
    """AlpacaEval-format proposal outputs -> Aligner inputs, for `generate --template=raw`.

    The input goes in `instruction`; `prepare --export` later puts the
    original instructions back (by position) so judges match the references.
    """
    for i, rec in enumerate(outputs):
        if not isinstance(rec.get("instruction"), str) or not isinstance(rec.get("output"), str):
            raise ValueError(f"record {i}: proposal outputs need 'instruction' and 'output'.")
        yield {"instruction": correction_prompt(rec["instruction"], rec["output"], template)}
