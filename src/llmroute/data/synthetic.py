"""Synthetic routing tables with a known answer, for tests of estimators, routers and the gateway.

`make_synthetic_table(n_prompts=200, seed=0)` builds a long-format `RoutingTable` from
project-written templates (no third-party text). Four topics x four models:

===========  ========  ========  ========  ========
topic        tiny-1b   math-7b   code-13b  big-70b
===========  ========  ========  ========  ========
arithmetic   0.20      **0.95**  0.40      0.85
code         0.10      0.30      **0.95**  0.85
geography    **0.95**  0.50      0.50      0.85
poetry       0.30      0.30      0.40      **0.90**
===========  ========  ========  ========  ========

(`EXPECTED_QUALITY`, the noise-free expected quality). Prices rise from tiny-1b to big-70b
(`SYNTHETIC_PRICES`). In every topic one model (bold) has the highest expected quality, by a margin
of at least 0.1, and no cheaper model comes close: the specialist beats the big generalist on its
own topic, the generalist wins only poetry. That model is the ground truth, stored per row in the
column `true_best` (and per prompt by `true_best(table)`); `true_quality` holds the noise-free
expected quality of each row.
A router should pick `true_best` at trade-off 0 (and any small one); with a large one, tiny-1b.

Observed quality = expected quality + Gaussian noise (sd `noise`), clipped to [0, 1]
(`binary=True` draws 0/1 outcomes with the expected quality as probability instead). Token counts
depend on the prompt (words x 1.3) and the topic (answer length); `cost_usd` = tokens x prices.
Topics are balanced (prompt i has topic i mod 4, in shuffled order); everything is deterministic
in `seed`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmroute.data.table import ModelPrice, RoutingTable

__all__ = [
    "EXPECTED_QUALITY",
    "SYNTHETIC_MODELS",
    "SYNTHETIC_PRICES",
    "SYNTHETIC_TOPICS",
    "TOPIC_BEST",
    "make_synthetic_table",
    "true_best",
]

SYNTHETIC_TOPICS: tuple[str, ...] = ("arithmetic", "code", "geography", "poetry")
SYNTHETIC_MODELS: tuple[str, ...] = ("tiny-1b", "math-7b", "code-13b", "big-70b")

#: USD per 1M input / output tokens; strictly increasing with the model's size.
SYNTHETIC_PRICES: dict[str, ModelPrice] = {
    "tiny-1b": ModelPrice(0.10, 0.10),
    "math-7b": ModelPrice(0.30, 0.60),
    "code-13b": ModelPrice(0.50, 1.00),
    "big-70b": ModelPrice(5.00, 15.00),
}

#: topic -> model -> noise-free expected quality.
EXPECTED_QUALITY: dict[str, dict[str, float]] = {
    "arithmetic": {"tiny-1b": 0.20, "math-7b": 0.95, "code-13b": 0.40, "big-70b": 0.85},
    "code": {"tiny-1b": 0.10, "math-7b": 0.30, "code-13b": 0.95, "big-70b": 0.85},
    "geography": {"tiny-1b": 0.95, "math-7b": 0.50, "code-13b": 0.50, "big-70b": 0.85},
    "poetry": {"tiny-1b": 0.30, "math-7b": 0.30, "code-13b": 0.40, "big-70b": 0.90},
}


def _cheapest_best(topic: str) -> str:
    q = EXPECTED_QUALITY[topic]
    top = max(q.values())
    best = [m for m in SYNTHETIC_MODELS if q[m] == top]
    return min(best, key=lambda m: (SYNTHETIC_PRICES[m].input_per_mtok, SYNTHETIC_PRICES[m].output_per_mtok))


#: topic -> the model with the highest expected quality, cheapest among ties (the ground truth).
TOPIC_BEST: dict[str, str] = {t: _cheapest_best(t) for t in SYNTHETIC_TOPICS}

# typical answer length in tokens per topic
_OUTPUT_TOKENS = {"arithmetic": 20, "code": 120, "geography": 8, "poetry": 60}

_NUMBER_WORDS = ("seven", "twelve", "nineteen", "forty-two", "a hundred", "three thousand")
_LANGS = ("Python", "JavaScript", "Go", "Rust", "C", "Java")
_CODE_TASKS = (
    "reverses a linked list",
    "checks whether a string is a palindrome",
    "merges two sorted arrays",
    "parses a date in ISO format",
    "counts the words in a text file",
    "removes duplicates from a list while keeping order",
    "computes the median of a list of numbers",
    "validates an email address with a regular expression",
)
_COUNTRIES = (
    "France", "Japan", "Brazil", "Kenya", "Canada", "Australia", "Egypt", "Norway", "Peru",
    "Vietnam", "Morocco", "Chile", "Poland", "Ghana", "Nepal", "Portugal",
)  # fmt: skip
_GEO_ASKS = (
    "What is the capital of {c}?",
    "Which continent is {c} in?",
    "Name the longest river that flows through {c}.",
    "What currency is used in {c}?",
    "Which countries share a border with {c}?",
    "What is the official language of {c}?",
)
_POEM_FORMS = ("haiku", "limerick", "sonnet", "short free-verse poem", "four-line rhyme")
_POEM_THEMES = (
    "the autumn rain", "a lighthouse at night", "an old bicycle", "the smell of coffee",
    "a city waking up", "a lost umbrella", "the first snow", "a quiet library", "the sea at dawn",
)  # fmt: skip
_POEM_MOODS = ("melancholic", "joyful", "playful", "calm", "nostalgic")


def _prompt(topic: str, rng: np.random.Generator, i: int) -> str:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    if topic == "arithmetic":
        a, b, c = (int(x) for x in rng.integers(2, 10_000, size=3))
        forms = (
            f"What is {a} plus {b} times {c}?",
            f"Compute {a} * {b} - {c} and show your steps.",
            f"If a box holds {a} apples and you buy {b} boxes, then give away {c} apples, how many are left?",
            f"Divide {a * b} by {b} and add {c}. What number do you get?",
            f"A train travels {a} km in {b % 20 + 1} hours. What is its average speed in km per hour?",
        )
        return pick(forms)
    if topic == "code":
        task, lang = pick(_CODE_TASKS), pick(_LANGS)
        forms = (
            f"Write a {lang} function that {task}.",
            f"Implement, in {lang}, a function that {task}; include unit tests.",
            f"Fix the bug in my {lang} code that {task}: it fails on empty input.",
            f"Explain the time complexity of a {lang} function that {task}, then write it.",
        )
        return pick(forms) + f" Call it helper_{i}."
    if topic == "geography":
        c = pick(_COUNTRIES)
        return pick(_GEO_ASKS).format(c=c) + pick(
            ("", " Answer briefly.", " One word, please.", " Be precise.")
        )
    form, theme, mood = pick(_POEM_FORMS), pick(_POEM_THEMES), pick(_POEM_MOODS)
    return (
        f"Write a {mood} {form} about {theme}"
        + pick((".", ", in the style of a lullaby.", " for a friend."))
        + (f" Mention the number {pick(_NUMBER_WORDS)}." if rng.random() < 0.5 else "")
    )


def make_synthetic_table(
    n_prompts: int = 200,
    seed: int = 0,
    *,
    noise: float = 0.05,
    binary: bool = False,
    missing_rate: float = 0.0,
) -> RoutingTable:
    """A small routing table whose best model per prompt is known by construction.

    Args:
        n_prompts: number of prompts (balanced over the four topics).
        seed: random seed; the same seed gives the same table.
        noise: standard deviation of the Gaussian noise on quality (graded mode).
        binary: draw 0/1 outcomes with the expected quality as probability instead.
        missing_rate: share of (prompt, model) cells whose quality is left missing (NaN), to
            exercise estimators on incomplete tables. Cost and tokens stay known.

    Returns:
        A validated `RoutingTable` with prices `SYNTHETIC_PRICES` and the extra columns
        `true_best` (per prompt) and `true_quality` (per row), `split` is not set.
    """
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    rng = np.random.default_rng(seed)
    topics = [SYNTHETIC_TOPICS[i % len(SYNTHETIC_TOPICS)] for i in range(n_prompts)]
    topics = [topics[k] for k in rng.permutation(n_prompts)]
    rows = []
    for i, topic in enumerate(topics):
        text = _prompt(topic, rng, i)
        tin = int(np.ceil(len(text.split()) * 1.3)) + 4
        for model in SYNTHETIC_MODELS:
            expected = EXPECTED_QUALITY[topic][model]
            if binary:
                q = float(rng.random() < expected)
            else:
                q = float(np.clip(expected + rng.normal(0.0, noise), 0.0, 1.0))
            if missing_rate > 0 and rng.random() < missing_rate:
                q = np.nan
            tout = max(1, round(_OUTPUT_TOKENS[topic] * rng.uniform(0.7, 1.3)))
            price = SYNTHETIC_PRICES[model]
            rows.append(
                {
                    "prompt_id": f"syn-{i:05d}",
                    "prompt": text,
                    "task": topic,
                    "model": model,
                    "quality": q,
                    "cost_usd": price.cost(tin, tout),
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "true_best": TOPIC_BEST[topic],
                    "true_quality": expected,
                }
            )
    return RoutingTable.from_frame(
        pd.DataFrame(rows), source=f"synthetic(n_prompts={n_prompts}, seed={seed})", prices=SYNTHETIC_PRICES
    )


def true_best(table: RoutingTable) -> list[str]:
    """Ground-truth model per prompt (in `table.prompt_ids` order) of a synthetic table."""
    if "true_best" not in table.df.columns:
        raise ValueError(f"{table.source}: no 'true_best' column; not a synthetic table")
    per = table.df.drop_duplicates("prompt_id").set_index("prompt_id")["true_best"]
    return per.loc[table.prompt_ids].astype(str).tolist()
