"""Scorers for the synthetic world's answers: style, format, accuracy, form, diversity.

All scorers read plain answer strings (what `ram_jax.generate` writes in the
`output` field), so they score every method the same way.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from experiments.demo.world import CITATION, CLOSERS, OPENERS, STYLES, TARGET_STYLE

_FACT_RES = (
    re.compile(
        r"The (?P<attr>capital|colour|number) of (?P<ent>[A-Z][a-z]+) is (?P<val>[A-Za-z]+)\."
    ),
    re.compile(
        r"(?P<ent>[A-Z][a-z]+) has (?P<val>[A-Za-z]+) as its (?P<attr>capital|colour|number)\."
    ),
)


@dataclasses.dataclass(frozen=True)
class Parsed:
    """An answer that follows the world's template grammar."""

    style: str
    entity: str
    attribute: str
    value: str


def split_citation(text: str) -> tuple[str, bool]:
    """`(answer without its closing citation, whether it had one)`."""
    text = text.strip()
    if text == CITATION or text.endswith(" " + CITATION):
        return text[: -len(CITATION)].rstrip(), True
    return text, False


def parse_answer(text: str) -> Parsed | None:
    """Parses `[opener] fact [closer] [citation]` with opener and closer of one style.

    Returns None when the answer is not exactly one template: a missing or
    doubled part, an opener and closer of different styles, trailing text.
    """
    text = split_citation(text)[0]
    for style in STYLES:
        openers = OPENERS[style] or ("",)
        closers = CLOSERS[style] or ("",)
        for opener in openers:
            if opener and not text.startswith(opener + " "):
                continue
            rest = text[len(opener) + 1 :] if opener else text
            for closer in closers:
                if closer and not rest.endswith(" " + closer):
                    continue
                fact = rest[: -(len(closer) + 1)] if closer else rest
                for fact_re in _FACT_RES:
                    m = fact_re.fullmatch(fact)
                    if m:
                        return Parsed(style, m["ent"], m["attr"], m["val"])
    return None


def style_compliant(text: str) -> bool:
    """Opens with a target-style opener, closes with a target-style closer
    (before any citation), and carries no marker of any other style."""
    text = split_citation(text)[0]
    opens = any(text.startswith(o + " ") for o in OPENERS[TARGET_STYLE])
    closes = any(text.endswith(" " + c) for c in CLOSERS[TARGET_STYLE])
    foreign = any(m in text for s in STYLES if s != TARGET_STYLE for m in OPENERS[s] + CLOSERS[s])
    return opens and closes and not foreign


def format_compliant(text: str) -> bool:
    """Ends with the citation, once."""
    body, cited = split_citation(text)
    return cited and CITATION not in body


def factually_accurate(
    text: str, entity: str, attribute: str, truth: str, values: Sequence[str]
) -> bool:
    """Names the asked entity and, of the attribute's possible values, exactly
    the true one (so hedging over several values does not count)."""
    words = set(re.findall(r"[A-Za-z]+", text))
    stated = {v for v in values if v in words}
    return entity in words and stated == {truth}


def well_formed(text: str, finished: bool = True) -> bool:
    """Parses as exactly one template and ended on EOS (not cut at the limit)."""
    return finished and parse_answer(text) is not None


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Corpus-level distinct-n: unique word n-grams over all n-grams."""
    grams = []
    for t in texts:
        w = t.split()
        grams.extend(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def score_answers(
    answers: Sequence[str],
    examples: Sequence,
    values: dict[str, Sequence[str]],
    finished: Sequence[bool] | None = None,
) -> dict[str, float]:
    """Mean style and format compliance, accuracy and well-formedness, and distinct-2.

    `examples` are the world's evaluation `Example`s in the same order as
    `answers`; `values` maps each attribute to its possible values.
    """
    if len(answers) != len(examples):
        raise ValueError(f"{len(answers)} answers for {len(examples)} evaluation prompts.")
    if not answers:
        raise ValueError("no answers to score.")
    finished = [True] * len(answers) if finished is None else list(finished)
    n = len(answers)
    return {
        "style_compliance": sum(map(style_compliant, answers)) / n,
        "format_compliance": sum(map(format_compliant, answers)) / n,
        "factual_accuracy": sum(
            factually_accurate(a, ex.entity, ex.attribute, ex.value, values[ex.attribute])
            for a, ex in zip(answers, examples, strict=True)
        )
        / n,
        "well_formed": sum(well_formed(a, f) for a, f in zip(answers, finished, strict=True)) / n,
        "distinct_2": distinct_n(answers, 2),
    }
