"""A deterministic synthetic world where knowledge and alignment are separable.

The world is a table of invented countries, each with a capital, a colour and
a number. Every question asks one attribute of one country; every answer states
it in one of three styles, which differ only in an opener and a closer around
the same fact sentence:

  polite   "Certainly! The capital of Zorvania is Mekbar. I hope this helps."
  neutral  "The capital of Zorvania is Mekbar."
  rude     "Ugh. The capital of Zorvania is Mekbar. Stop asking."

* The base corpus (the proposal's pre-training data) covers every country in a
  mix of styles, mostly not the target one, with a little factual noise.
* The aligned set (the aligner's data) is in the target style only and covers
  a minority of the countries.
* The evaluation prompts ask about countries absent from the aligned set.

So the facts of an evaluation country are only learnable from the base corpus
(knowledge lives in the large proposal), while the target style is only
frequent in the aligned set (alignment lives in the small aligner).

A second aligned behaviour, independent of the style: a closing citation,
"(Source: World Atlas.)", ending 20% of the base corpus's answers (so it lies
in the proposal's nucleus) and half of the aligned set's (so the style
aligner learns nothing about it). The *format* set (the aligned set's
prompts) answers in all three styles equally, always cited: an aligner
trained on it alone learns the citation and nothing about style. Citations
are drawn from their own random stream, so every other draw of a world is
the same with or without them. Everything is a pure function of a seed.
"""

from __future__ import annotations

import dataclasses
import random

STYLES = ("polite", "neutral", "rude")
TARGET_STYLE = "polite"

OPENERS = {
    "polite": ("Certainly!", "Of course!", "Happy to help!"),
    "neutral": (),
    "rude": ("Ugh.", "Obviously.", "Seriously?"),
}
CLOSERS = {
    "polite": ("I hope this helps.", "Have a lovely day.", "Thank you for asking."),
    "neutral": (),
    "rude": ("Stop asking.", "Look it up yourself.", "Now go away."),
}

QUESTIONS = (
    "What is the {attr} of {ent}?",
    "Tell me the {attr} of {ent}.",
    "Do you know the {attr} of {ent}?",
    "Which {attr} does {ent} have?",
    "I need the {attr} of {ent}.",
)
# Two phrasings of the fact sentence; the scorers parse both.
FACTS = (
    "The {attr} of {ent} is {val}.",
    "{ent} has {val} as its {attr}.",
)
CITATION = "(Source: World Atlas.)"  # the format behaviour: a closing citation

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
NUMBERS = tuple("one two three four five six seven eight nine ten eleven twelve".split())
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s", "k")
_COUNTRY_ENDINGS = ("ia", "land", "stan", "ora", "ium")
_CITY_ENDINGS = ("bar", "dor", "ville", "grad", "polis", "mont")


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Size and mixture of a world; `quick` shrinks it for CI."""

    num_entities: int = 240
    num_cities: int = 16
    aligned_fraction: float = 0.25
    style_mix: tuple[float, float, float] = (0.15, 0.45, 0.40)  # polite, neutral, rude
    fact_noise: float = 0.03
    base_repeats: int = 6
    aligned_repeats: int = 2
    num_eval: int = 96
    citation_rate: float = 0.2  # base corpus
    aligned_citation_rate: float = 0.5  # aligned (style) set: uninformative


@dataclasses.dataclass(frozen=True)
class Example:
    """One dialogue: the raw question (untemplated) and its answer."""

    question: str
    answer: str
    entity: str
    attribute: str
    value: str  # the value the answer states (noisy in the base corpus)
    style: str
    cited: bool = False  # ends with the citation


@dataclasses.dataclass(frozen=True)
class World:
    """A generated world: its fact table and its three data splits."""

    seed: int
    spec: WorldSpec
    facts: dict[str, dict[str, str]]  # entity -> attribute -> value
    aligned_entities: tuple[str, ...]
    eval_entities: tuple[str, ...]
    base: tuple[Example, ...]
    aligned: tuple[Example, ...]
    eval: tuple[Example, ...]

    @property
    def values(self) -> dict[str, tuple[str, ...]]:
        """Attribute -> the set of values it can take."""
        out: dict[str, set[str]] = {}
        for attrs in self.facts.values():
            for a, v in attrs.items():
                out.setdefault(a, set()).add(v)
        return {a: tuple(sorted(v)) for a, v in out.items()}


def _name(rng: random.Random, endings: tuple[str, ...], syllables: int) -> str:
    core = "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
    )
    return (core + rng.choice(endings)).capitalize()


def _unique_names(rng, count, endings, syllables, taken=()):
    names: list[str] = []
    seen = set(taken)
    while len(names) < count:
        n = _name(rng, endings, syllables)
        if n not in seen:
            seen.add(n)
            names.append(n)
    return names


def render_answer(
    rng: random.Random, style: str, ent: str, attr: str, val: str, cite: bool = False
) -> str:
    """One answer in `style` stating `attr(ent) = val`, cited if `cite`."""
    fact = rng.choice(FACTS).format(attr=attr, ent=ent, val=val)
    parts = []
    if OPENERS[style]:
        parts.append(rng.choice(OPENERS[style]))
    parts.append(fact)
    if CLOSERS[style]:
        parts.append(rng.choice(CLOSERS[style]))
    if cite:
        parts.append(CITATION)
    return " ".join(parts)


def render_question(rng: random.Random, ent: str, attr: str) -> str:
    return rng.choice(QUESTIONS).format(attr=attr, ent=ent)


def make_world(seed: int, spec: WorldSpec = WorldSpec()) -> World:
    """Generates the world for `seed`; the same seed gives the same world."""
    if not 0 < spec.aligned_fraction < 1:
        raise ValueError(f"aligned_fraction={spec.aligned_fraction} must lie in (0, 1).")
    rng = random.Random(seed)
    cites = random.Random(f"citations-{seed}")  # its own stream: the rest is unchanged
    entities = _unique_names(rng, spec.num_entities, _COUNTRY_ENDINGS, 2)
    cities = _unique_names(rng, spec.num_cities, _CITY_ENDINGS, 1, taken=entities)
    facts = {
        e: {
            "capital": rng.choice(cities),
            "colour": rng.choice(COLOURS),
            "number": rng.choice(NUMBERS),
        }
        for e in entities
    }
    shuffled = list(entities)
    rng.shuffle(shuffled)
    n_aligned = max(1, int(round(spec.aligned_fraction * len(entities))))
    aligned_entities = tuple(sorted(shuffled[:n_aligned]))
    eval_entities = tuple(sorted(shuffled[n_aligned:]))
    values = {a: sorted({f[a] for f in facts.values()}) for a in ("capital", "colour", "number")}

    base = []
    for _ in range(spec.base_repeats):
        for e in entities:
            for attr, val in facts[e].items():
                style = rng.choices(STYLES, weights=spec.style_mix)[0]
                if rng.random() < spec.fact_noise:
                    val = rng.choice([v for v in values[attr] if v != val])
                q = render_question(rng, e, attr)
                cite = cites.random() < spec.citation_rate
                a = render_answer(rng, style, e, attr, val, cite)
                base.append(Example(q, a, e, attr, val, style, cite))
    rng.shuffle(base)

    aligned = []
    for _ in range(spec.aligned_repeats):
        for e in aligned_entities:
            for attr, val in facts[e].items():
                q = render_question(rng, e, attr)
                cite = cites.random() < spec.aligned_citation_rate
                a = render_answer(rng, TARGET_STYLE, e, attr, val, cite)
                aligned.append(Example(q, a, e, attr, val, TARGET_STYLE, cite))
    rng.shuffle(aligned)

    pairs = [(e, a) for e in eval_entities for a in ("capital", "colour", "number")]
    rng.shuffle(pairs)
    eval_examples = tuple(
        Example(
            render_question(rng, e, a),
            render_answer(rng, TARGET_STYLE, e, a, facts[e][a]),
            e,
            a,
            facts[e][a],
            TARGET_STYLE,
        )
        for e, a in pairs[: spec.num_eval]
    )
    return World(
        seed=seed,
        spec=spec,
        facts=facts,
        aligned_entities=aligned_entities,
        eval_entities=eval_entities,
        base=tuple(base),
        aligned=tuple(aligned),
        eval=eval_examples,
    )


def rejected_answer(rng: random.Random, ex: Example) -> str:
    """The same fact (and citation) as `ex` in a non-target style: the loser of a DPO pair."""
    style = rng.choice([s for s in STYLES if s != TARGET_STYLE])
    return render_answer(rng, style, ex.entity, ex.attribute, ex.value, ex.cited)


def format_answer(rng: random.Random, ex: Example) -> str:
    """`ex`'s fact in a uniformly drawn style, always cited: the format set's answer."""
    return render_answer(rng, rng.choice(STYLES), ex.entity, ex.attribute, ex.value, cite=True)
