"""A synthetic SST-2-style demo set, generated from templates so that the toolchain runs end to
end on a machine with neither the GLUE files nor the hub.

This is NOT SST-2: every sentence is built here from the word lists below (no row of the real
corpus is copied). It is small and easy: good for smoke runs and tutorials, useless as a
benchmark. Text follows SST-2's surface form (lower case, PTB-style tokens such as ``is n't``)
so that tokenisation behaves as on the real data.
"""

from __future__ import annotations

import random

DEMO_SIZES = {"train": 400, "dev": 100}
_SEEDS = {"train": 20240101, "dev": 20240202}  # fixed: the demo set must never change between runs

_SUBJECTS = ("the movie", "this film", "the plot", "the acting", "the story", "the script",
             "the soundtrack", "the cast", "the ending", "the director 's latest", "this picture",
             "the dialogue", "the second half", "the whole thing", "the lead performance")
_ADJECTIVES = {
    1: ("great", "wonderful", "brilliant", "moving", "funny", "charming", "gripping", "beautiful",
        "clever", "delightful", "touching", "superb", "fresh", "heartfelt", "witty"),
    0: ("awful", "boring", "dull", "tedious", "clumsy", "bland", "painful", "lifeless", "silly",
        "forgettable", "messy", "tiresome", "flat", "shallow", "predictable"),
}
_ADVERBS = ("", "very ", "really ", "truly ", "quite ", "remarkably ", "thoroughly ")
_CLAUSES = {
    1: ("i would gladly watch it again", "it left me smiling", "it is worth every minute",
        "the audience loved it", "it deserves its praise", "you will not regret it"),
    0: ("i want my two hours back", "i nearly fell asleep", "it is a waste of time",
        "the audience walked out", "nothing works", "you can skip it"),
}
# {s} subject, {a} adjective of the row's label, {n} adjective of the other label, {c} clause.
# Weights: negated rows ({n}) are ~10%, enough to need more than word counting, few enough
# that a small model still learns the set in a smoke run.
_TEMPLATES = (
    ("{s} is {v}{a} .", 1.0),
    ("{s} was {v}{a} from start to finish .", 1.0),
    ("i found {s} {v}{a} .", 1.0),
    ("{s} is {v}{a} , and {c} .", 1.0),
    ("{c} : {s} is {a} .", 1.0),
    ("{s} feels {v}{a} throughout .", 1.0),
    ("{s} : {v}{a} ; {c} .", 1.0),
    ("{s} is n't {n} at all .", 0.4),
    ("{s} is never {n} .", 0.4),
)


def demo_rows(split: str) -> list[dict]:
    """Return the demo rows of a split (``train`` or ``dev``) as ``{"sentence", "label"}`` dicts.

    Balanced labels, shuffled, no sentence repeated within or across splits, identical on
    every call.
    """
    if split not in DEMO_SIZES:
        raise ValueError(f"unknown demo split {split!r}; choose train or dev")
    taken = set() if split == "train" else {r["sentence"] for r in demo_rows("train")}
    rng = random.Random(_SEEDS[split])
    rows: list[dict] = []
    for label in (0, 1):
        count = 0
        while count < DEMO_SIZES[split] // 2:
            text = rng.choices(_TEMPLATES, weights=[w for _, w in _TEMPLATES])[0][0]
            sentence = text.format(s=rng.choice(_SUBJECTS), v=rng.choice(_ADVERBS),
                                   a=rng.choice(_ADJECTIVES[label]),
                                   n=rng.choice(_ADJECTIVES[1 - label]), c=rng.choice(_CLAUSES[label]))
            sentence += " "  # as in SST-2, the text ends with a space
            if sentence in taken:
                continue
            taken.add(sentence)
            rows.append({"sentence": sentence, "label": label})
            count += 1
    rng.shuffle(rows)
    return rows
