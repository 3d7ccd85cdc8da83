"""Project-written, template-generated evaluation pairs for the semantic cache.

`paraphrase_pairs()`: (a, b) that ask the same thing in different words — a cache SHOULD hit.
`contrast_pairs()`: (a, b, kind) that look alike but ask different things (negation, number,
date, entity, polarity; and, from issue 11: negation by prefix or suffix (safe/unsafe,
harmful/harmless), am/pm, units, swapped order (A faster than B / B faster than A, km to miles /
miles to km), antonym actions (cancel/renew) and swapped lower-case entities (vegan/beef)) — a
cache must NEVER hit. All text here was written for this project.
"""

from __future__ import annotations

import random

_COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "Norway", "India", "Mexico", "Egypt", "Italy"]
_BOOKS = ["Pride and Prejudice", "Moby Dick", "War and Peace", "Hamlet", "Don Quixote", "Dracula",
          "Frankenstein", "Ulysses"]  # fmt: skip
_FOODS = ["oatmeal", "green tea", "dark chocolate", "avocado", "blueberries", "salmon", "almonds", "spinach"]
_CONCEPTS = ["recursion", "photosynthesis", "inflation", "machine learning", "blockchain", "entropy",
             "natural selection", "supply and demand", "public key cryptography", "gradient descent"]  # fmt: skip
_TASKS = ["reverse a list", "read a CSV file", "sort a dictionary by value", "remove duplicates from a list",
          "merge two dictionaries", "check if a string is a palindrome", "parse JSON", "get the current date"]  # fmt: skip
_DISHES = ["vegetarian lasagna", "banana bread", "chicken curry", "pancakes", "minestrone soup", "guacamole"]
_CITIES = ["Paris", "Tokyo", "Berlin", "Madrid", "Sydney", "Toronto", "Cairo", "Lima"]
_DEVICES = ["the Bluetooth on my laptop", "dark mode in Chrome", "two-factor authentication", "the Wi-Fi",
            "location services on my phone", "autosave in Word"]  # fmt: skip
_LANGS = ["python", "java", "javascript", "rust", "ruby", "go"]

_PARAPHRASE_TEMPLATES: list[tuple[str, str, list[str]]] = [
    ("What is the capital of {x}?", "What's the capital city of {x}?", _COUNTRIES),
    ("Tell me the capital of {x}.", "Which city is the capital of {x}?", _COUNTRIES),
    ("Who wrote {x}?", "Who is the author of {x}?", _BOOKS),
    ("Summarize the plot of {x}.", "Give me a summary of the plot of {x}.", _BOOKS),
    ("What are the health benefits of {x}?", "What health benefits does {x} have?", _FOODS),
    ("Is {x} healthy?", "Is eating {x} healthy?", _FOODS),
    ("Explain {x} in simple terms.", "Can you explain {x} in simple terms?", _CONCEPTS),
    ("What is {x}?", "Could you tell me what {x} is?", _CONCEPTS),
    ("How do I {x} in Python?", "How can I {x} in Python?", _TASKS),
    ("What's the best way to {x} in Python?", "What is the best way to {x} in Python?", _TASKS),
    ("Give me a recipe for {x}.", "Can you give me a recipe for {x}?", _DISHES),
    ("How do I make {x}?", "How can I make {x} at home?", _DISHES),
    ("What is the weather usually like in {x}?", "What's the typical weather in {x}?", _CITIES),
    ("What are the top attractions in {x}?", "What are the main tourist attractions in {x}?", _CITIES),
    ("How do I turn on {x}?", "How can I turn on {x}?", _DEVICES),
]
_CONTRAST_TEMPLATES: list[tuple[str, str, str, list[str]]] = [
    ("negation", "Is {x} good for you?", "Is {x} not good for you?", _FOODS),
    ("negation", "Why does my {x} code work?", "Why doesn't my {x} code work?", _LANGS),
    ("negation", "Which foods contain {x}?", "Which foods do not contain {x}?", ["gluten", "lactose", "nuts", "soy"]),
    ("negation", "Should I use {x} for this project?", "Should I never use {x} for this project?", _LANGS),
    ("polarity", "How do I turn on {x}?", "How do I turn off {x}?", _DEVICES),
    ("polarity", "How do I enable {x}?", "How do I disable {x}?", _DEVICES),
    ("polarity", "How can I increase my {x}?", "How can I decrease my {x}?",
     ["credit score", "heart rate", "screen brightness", "typing speed"]),
    ("polarity", "Sort the list in ascending order using {x}.", "Sort the list in descending order using {x}.", _LANGS),
    ("polarity", "How do I encrypt a file with {x}?", "How do I decrypt a file with {x}?", ["GPG", "OpenSSL", "7-Zip"]),
]  # fmt: skip
_YEARS = list(range(1990, 2024))
_SERVICES = ["Netflix", "Spotify", "gym", "newspaper", "Adobe", "car insurance"]
# issue 11: (kind, a, b, fills) for the families above; `{x}` takes each fill in turn
_CONTRAST_TEMPLATES_11: list[tuple[str, str, str, list[str]]] = [
    ("prefix_negation", "Is it safe to eat raw {x}?", "Is it unsafe to eat raw {x}?", ["eggs", "salmon", "flour"]),
    ("prefix_negation", "Is the latest {x} release stable?", "Is the latest {x} release unstable?", _LANGS[:3]),
    ("prefix_negation", "Is it legal to record a phone call in {x}?",
     "Is it illegal to record a phone call in {x}?", _COUNTRIES[:3]),
    ("prefix_negation", "Is it possible to {x} in one line of Python?",
     "Is it impossible to {x} in one line of Python?", _TASKS[:3]),
    ("prefix_negation", "Which {x} features are supported on Windows?",
     "Which {x} features are unsupported on Windows?", _LANGS[3:]),
    ("prefix_negation", "Are alcoholic drinks bad for {x}?", "Are non-alcoholic drinks bad for {x}?",
     ["the liver", "sleep", "weight loss"]),
    ("prefix_negation", "Is {x} harmful to dogs?", "Is {x} harmless to dogs?", ["chocolate", "garlic", "peanut butter"]),
    ("prefix_negation", "Write a polite reply to a {x}.", "Write an impolite reply to a {x}.",
     ["customer complaint", "job offer", "wedding invitation"]),
    ("prefix_negation", "Why is my {x} connection secure?", "Why is my {x} connection insecure?",
     ["VPN", "database", "Wi-Fi"]),
    ("ampm", "Set an alarm for {x} am tomorrow.", "Set an alarm for {x} pm tomorrow.", ["5", "6:30", "7", "11"]),
    ("ampm", "Is the pharmacy open at {x} a.m. on Sundays?", "Is the pharmacy open at {x} p.m. on Sundays?",
     ["8", "9:30", "10"]),
    ("ampm", "Book a table for four at {x}am.", "Book a table for four at {x}pm.", ["7", "8", "12"]),
    ("unit", "How many calories are in 100 {x} of rice?", "How many calories are in 100 ounces of rice?",
     ["grams", "g", "kilograms"]),
    ("unit", "Is 5 {x} of melatonin too much?", "Is 5 mcg of melatonin too much?", ["mg", "milligrams"]),
    ("unit", "Is 30 {x} hot for a bath?", "Is 30 degrees Fahrenheit hot for a bath?",
     ["degrees Celsius", "°C"]),
    ("unit", "How long does it take to walk 10 {x}?", "How long does it take to walk 10 miles?",
     ["km", "kilometers"]),
    ("unit", "Add 2 {x} of salt to the soup?", "Add 2 tbsp of salt to the soup?", ["tsp", "teaspoons"]),
    ("unit", "Is a 3 {x} upload limit enough for photos?", "Is a 3 GB upload limit enough for photos?",
     ["MB", "mb", "KB"]),
    ("antonym_action", "How do I cancel my {x} subscription?", "How do I renew my {x} subscription?", _SERVICES),
    ("antonym_action", "How do I join a {x} group?", "How do I leave a {x} group?", ["WhatsApp", "Facebook", "Slack"]),
    ("antonym_action", "What should I ask before I hire a {x}?", "What should I ask before I fire a {x}?",
     ["contractor", "nanny", "lawyer"]),
    ("antonym_action", "How do I deposit cash at a {x} ATM?", "How do I withdraw cash at a {x} ATM?",
     ["Chase", "Barclays", "local"]),
    ("antonym_action", "How do I follow a channel on {x}?", "How do I unfollow a channel on {x}?",
     ["YouTube", "Twitch", "Telegram"]),
    ("antonym_action", "How do I approve a pull request on {x}?", "How do I reject a pull request on {x}?",
     ["GitHub", "GitLab", "Bitbucket"]),
]  # fmt: skip
# issue 11, swapped order: "{a} ... {b}" vs "{b} ... {a}"
_ORDER_TEMPLATES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Is a {a} faster than a {b}?", [("cheetah", "lion"), ("horse", "greyhound"), ("train", "plane")]),
    ("Is {a} faster than {b}?", [("Python", "Java"), ("Rust", "Go"), ("PostgreSQL", "MySQL")]),
    ("Why is {a} more expensive than {b}?", [("gold", "silver"), ("butter", "margarine"), ("coffee", "tea")]),
    ("Convert 10 {a} to {b}.", [("km", "miles"), ("celsius", "fahrenheit"), ("pounds", "kilograms")]),
    ("How do I convert a {a} to a {b} in Python?", [("list", "tuple"), ("string", "integer"), ("dict", "string")]),
    ("Translate this sentence from {a} to {b}.", [("French", "German"), ("English", "Spanish")]),
    ("Is {a} heavier than {b}?", [("steel", "aluminium"), ("water", "oil")]),
]  # fmt: skip
# issue 11, swapped lower-case entities: the template with each of two fills
_SWAP_TEMPLATES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Give me a {a} recipe for lasagna.", [("vegan", "beef"), ("vegetarian", "pork"), ("keto", "vegan")]),
    ("What wine goes well with {a}?", [("fish", "steak"), ("chicken", "lamb"), ("salmon", "beef")]),
    ("Is it safe to give cheese to my {a}?", [("cat", "dog"), ("rabbit", "hamster")]),
    ("Does a {a} shirt go with navy trousers?", [("red", "green"), ("brown", "white")]),
    ("Make a {a} stir fry for two.", [("tofu", "chicken"), ("shrimp", "pork")]),
    ("Is a {a} countertop easy to clean?", [("marble", "granite"), ("wood", "steel")]),
]  # fmt: skip


def paraphrase_pairs(seed: int = 0) -> list[tuple[str, str]]:
    """Pairs that mean the same (expected cache hits)."""
    out = []
    for a, b, fills in _PARAPHRASE_TEMPLATES:
        for x in fills:
            out.append((a.format(x=x), b.format(x=x)))
    random.Random(seed).shuffle(out)
    return out


def contrast_pairs(seed: int = 0) -> list[tuple[str, str, str]]:
    """Near-identical pairs that must not share an answer: (a, b, kind)."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    for kind, a, b, fills in _CONTRAST_TEMPLATES + _CONTRAST_TEMPLATES_11:
        for x in fills:
            out.append((a.format(x=x), b.format(x=x), kind))
    for t, ab in _ORDER_TEMPLATES:
        for x, y in ab:
            out.append((t.format(a=x, b=y), t.format(a=y, b=x), "order"))
    for t, ab in _SWAP_TEMPLATES:
        for x, y in ab:
            out.append((t.format(a=x), t.format(a=y), "entity_swap"))
    for _ in range(20):
        y = rng.choice(_YEARS)
        c = rng.choice(_COUNTRIES)
        out.append((f"What was the GDP of {c} in {y}?", f"What was the GDP of {c} in {y + 1}?", "number"))
    for n in (3, 5, 10, 12, 25, 100):
        out.append((f"Convert {n} miles to kilometers.", f"Convert {n + 1} miles to kilometers.", "number"))
        out.append(
            (f"Write a {n}-line poem about the sea.", f"Write a {n * 2}-line poem about the sea.", "number")
        )
    out.append(("Give me two reasons to learn Spanish.", "Give me three reasons to learn Spanish.", "number"))
    out.append(("List five tips for better sleep.", "List ten tips for better sleep.", "number"))
    months = ["January", "March", "June", "September", "November"]
    for i, m in enumerate(months):
        out.append(
            (f"What holidays are in {m}?", f"What holidays are in {months[(i + 1) % len(months)]}?", "date")
        )
    out.append(("What events are scheduled for Monday?", "What events are scheduled for Friday?", "date"))
    out.append(("What's the weather today in Paris?", "What's the weather tomorrow in Paris?", "date"))
    for i, c in enumerate(_COUNTRIES):
        d = _COUNTRIES[(i + 1) % len(_COUNTRIES)]
        out.append((f"What is the capital of {c}?", f"What is the capital of {d}?", "entity"))
    for i, b in enumerate(_BOOKS):
        out.append((f"Who wrote {b}?", f"Who wrote {_BOOKS[(i + 1) % len(_BOOKS)]}?", "entity"))
    for i, c in enumerate(_CITIES):
        out.append((f"What are the top attractions in {c}?", f"What are the top attractions in "
                    f"{_CITIES[(i + 1) % len(_CITIES)]}?", "entity"))  # fmt: skip
    for i, lang in enumerate(_LANGS):
        other = _LANGS[(i + 1) % len(_LANGS)]
        out.append((f"How do I reverse a list in {lang}?", f"How do I reverse a list in {other}?", "entity"))
    return out
