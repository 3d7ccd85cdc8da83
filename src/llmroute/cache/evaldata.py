"""Project-written, template-generated evaluation pairs for the semantic cache.

`paraphrase_pairs()`: (a, b) that ask the same thing in different words — a cache SHOULD hit.
`contrast_pairs()`: (a, b, kind) that look alike but ask different things (negation, number,
date, entity, polarity; and, from issue 11: negation by prefix or suffix (safe/unsafe,
harmful/harmless), am/pm, units, swapped order (A faster than B / B faster than A, km to miles /
miles to km), antonym actions (cancel/renew) and swapped lower-case entities (vegan/beef)) — a
cache must NEVER hit. The guard's word lists were built on these: they are its development set.
`heldout_contrast_pairs()`: (a, b, kind) of the same families, written after the word lists in
other wording and with words that are in none of them: the set the guard is evaluated on.
All text here was written for this project.
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


# ---- held-out contrast set (issue 11 item 13) -----------------------------------------------------
# Written AFTER the guard's word lists (`llmroute.cache.critical`) were built on the pairs above, in
# other wording and with other words of the same families. The words that tell a held-out pair
# apart are in none of the guard's open-class lists (polarity, kinds, lexicon, units, negatable
# stems, conversion verbs): tests/security/test_response_cache.py checks it, so the lists can never
# learn them. Closed classes (negators, numerals, month and weekday names, am/pm) have no other
# words, so the negation, number, date and ampm pairs use them in new sentences instead.
_HELDOUT: list[tuple[str, str, str]] = [
    # negation
    ("negation", "Why did the nightly backup succeed?", "Why didn't the nightly backup succeed?"),
    ("negation", "Explain why the unit test passes.", "Explain why the unit test doesn't pass."),
    ("negation", "Recommend a hiking jacket that is waterproof.", "Recommend a hiking jacket that isn't waterproof."),
    ("negation", "Which houseplants grow well in shade?", "Which houseplants never grow well in shade?"),
    ("negation", "List some snacks with caffeine in them.", "List some snacks without caffeine in them."),
    ("negation", "Suggest a caffeinated drink for the morning.", "Suggest a caffeine-free drink for the morning."),
    ("negation", "Which toothpaste brands contain fluoride?", "Which toothpaste brands are fluoride-free?"),
    ("negation", "Do hamsters need a wheel in the cage?", "Do hamsters not need a wheel in the cage?"),
    # negation by prefix or suffix, on stems the guard has no list entry for
    ("prefix_negation", "Is the tap water in Lisbon drinkable?", "Is the tap water in Lisbon undrinkable?"),
    ("prefix_negation", "Which of these wild mushrooms are edible?", "Which of these wild mushrooms are inedible?"),
    ("prefix_negation", "Is the damage to my phone screen repairable?",
     "Is the damage to my phone screen irreparable?"),
    ("prefix_negation", "Is dashcam footage admissible in court?", "Is dashcam footage inadmissible in court?"),
    ("prefix_negation", "Why is this cough syrup effective for toddlers?",
     "Why is this cough syrup ineffective for toddlers?"),
    ("prefix_negation", "Why is my spaniel so obedient on walks?", "Why is my spaniel so disobedient on walks?"),
    ("prefix_negation", "Is a root canal treatment painful?", "Is a root canal treatment painless?"),
    ("prefix_negation", "Is this rental clause enforceable?", "Is this rental clause unenforceable?"),
    ("prefix_negation", "Is table salt soluble in olive oil?", "Is table salt insoluble in olive oil?"),
    ("prefix_negation", "Does the clinic offer invasive heart tests?", "Does the clinic offer noninvasive heart tests?"),
    ("prefix_negation", "Is the gap between the two groups significant?",
     "Is the gap between the two groups insignificant?"),
    ("prefix_negation", "Is a loss from a failed startup recoverable?",
     "Is a loss from a failed startup irrecoverable?"),
    ("prefix_negation", "How do I deal with a tidy roommate?", "How do I deal with an untidy roommate?"),
    # am / pm in other spellings and sentences
    ("ampm", "Wake me up at 5.45am please.", "Wake me up at 5.45pm please."),
    ("ampm", "Does the last ferry leave at 11 P.M.?", "Does the last ferry leave at 11 A.M.?"),
    ("ampm", "Schedule the call for 10:15 am Pacific time.", "Schedule the call for 10:15 pm Pacific time."),
    ("ampm", "My flight lands at 6am, can I check in early?", "My flight lands at 6pm, can I check in early?"),
    ("ampm", "Is it rude to phone a colleague at 9 pm?", "Is it rude to phone a colleague at 9 am?"),
    ("ampm", "The bakery closes at 8 p.m. on weekdays, right?", "The bakery closes at 8 a.m. on weekdays, right?"),
    ("ampm", "Remind me to take the tablet at 7.30 a.m.", "Remind me to take the tablet at 7.30 p.m."),
    ("ampm", "Which trains leave Leeds after 4pm?", "Which trains leave Leeds after 4am?"),
    # units the guard has no list entry for
    ("unit", "Is 2 pints of beer too much before driving?", "Is 2 quarts of beer too much before driving?"),
    ("unit", "Is 800 lumens bright enough for a desk lamp?", "Is 800 lux bright enough for a desk lamp?"),
    ("unit", "Is 100 joules a lot of energy?", "Is 100 calories a lot of energy?"),
    ("unit", "Is 500 kcal a decent breakfast?", "Is 500 kJ a decent breakfast?"),
    ("unit", "Is 10 cc of cough syrup too much for a child?", "Is 10 drops of cough syrup too much for a child?"),
    ("unit", "Is drinking 2 quarts of water a day enough?", "Is drinking 2 pints of water a day enough?"),
    ("unit", "Is 85 decibels too loud for headphones?", "Is 85 percent too loud for headphones?"),
    ("unit", "Can I take a 20000 mAh power bank on a plane?", "Can I take a 20000 Wh power bank on a plane?"),
    # swapped order: comparisons, conversions and from/to, on words the guard has no list entry for
    ("order", "Is a tiger stronger than a gorilla?", "Is a gorilla stronger than a tiger?"),
    ("order", "Does espresso have more caffeine than cola?", "Does cola have more caffeine than espresso?"),
    ("order", "Is renting cheaper than owning in the long run?", "Is owning cheaper than renting in the long run?"),
    ("order", "How do I turn a spreadsheet into a chart?", "How do I turn a chart into a spreadsheet?"),
    ("order", "Translate good morning from Hindi to Korean.", "Translate good morning from Korean to Hindi."),
    ("order", "What is the cheapest way to ship a parcel from Leeds to Dublin?",
     "What is the cheapest way to ship a parcel from Dublin to Leeds?"),
    ("order", "Is a mango sweeter than a peach?", "Is a peach sweeter than a mango?"),
    ("order", "Rewrite this function from recursion to iteration.", "Rewrite this function from iteration to recursion."),
    ("order", "Migrate my blog from wordpress to ghost.", "Migrate my blog from ghost to wordpress."),
    ("order", "Are wolves more dangerous than bears?", "Are bears more dangerous than wolves?"),
    ("order", "Can a lizard outrun a spider?", "Can a spider outrun a lizard?"),
    # antonym actions the guard has no list entry for
    ("antonym_action", "How do I mute a group chat on my phone?", "How do I unmute a group chat on my phone?"),
    ("antonym_action", "How do I pause my gym membership?", "How do I resume my gym membership?"),
    ("antonym_action", "How do I archive an email in Outlook?", "How do I unarchive an email in Outlook?"),
    ("antonym_action", "Should I promote the new intern?", "Should I demote the new intern?"),
    ("antonym_action", "How do I tighten the bolts on my bike?", "How do I loosen the bolts on my bike?"),
    ("antonym_action", "How do I grant edit access to a shared folder?",
     "How do I revoke edit access to a shared folder?"),
    ("antonym_action", "How do I expand all folders in the sidebar?", "How do I collapse all folders in the sidebar?"),
    ("antonym_action", "Can I inflate a bike tyre with a car pump?", "Can I deflate a bike tyre with a car pump?"),
    ("antonym_action", "How do I charge a lithium battery safely?", "How do I discharge a lithium battery safely?"),
    ("antonym_action", "Why do people upvote posts on forums?", "Why do people downvote posts on forums?"),
    # swapped lower-case entities the guard has no list entry for
    ("entity_swap", "Give me a lentil soup recipe.", "Give me a barley soup recipe."),
    ("entity_swap", "Can guinea pigs eat carrots?", "Can guinea pigs eat celery?"),
    ("entity_swap", "Which wine goes well with lobster?", "Which wine goes well with mushrooms?"),
    ("entity_swap", "How often should I water a cactus?", "How often should I water a fern?"),
    ("entity_swap", "Does a mahogany table need oiling?", "Does a teak table need oiling?"),
    ("entity_swap", "What's a good name for a pet tortoise?", "What's a good name for a pet iguana?"),
    ("entity_swap", "How do I get a coffee stain out of a linen shirt?",
     "How do I get a coffee stain out of a denim shirt?"),
    ("entity_swap", "Is oat milk good for baking?", "Is almond milk good for baking?"),
    ("entity_swap", "How long should I boil quinoa?", "How long should I boil couscous?"),
    ("entity_swap", "What should I feed a sick goat?", "What should I feed a sick sheep?"),
    # numbers, dates and capitalised entities in new sentences
    ("number", "Is 38.5 a fever for a toddler?", "Is 37.5 a fever for a toddler?"),
    ("number", "Split a bill of 120 between 4 people.", "Split a bill of 120 between 6 people."),
    ("number", "Is a credit score of 650 good enough for a mortgage?",
     "Is a credit score of 560 good enough for a mortgage?"),
    ("number", "Is 1/4 cup of oil too much for one cake?", "Is 3/4 cup of oil too much for one cake?"),
    ("number", "Work out a 15% tip on a $80 bill.", "Work out a 20% tip on a $80 bill."),
    ("number", "What happened in Europe in 1848?", "What happened in Europe in 1868?"),
    ("date", "What's on TV on Saturday evening?", "What's on TV on Sunday evening?"),
    ("date", "What's the forecast for Thursday in Oslo?", "What's the forecast for Tuesday in Oslo?"),
    ("date", "Which flowers bloom in late autumn?", "Which flowers bloom in late spring?"),
    ("date", "Are banks open on the 2nd of January?", "Are banks open on the 2nd of February?"),
    ("entity", "Who painted the Mona Lisa?", "Who painted the Guernica mural?"),
    ("entity", "What's the population of Peru?", "What's the population of Chile?"),
    ("entity", "Who founded Nintendo?", "Who founded Microsoft?"),
    ("entity", "How tall is Mount Kilimanjaro?", "How tall is Mount Elbrus?"),
]  # fmt: skip


def heldout_contrast_pairs() -> list[tuple[str, str, str]]:
    """Near-identical pairs that must not share an answer, (a, b, kind), written after the guard's
    word lists and kept out of them: the set the contrast guard is evaluated on (the pairs of
    `contrast_pairs()` are its development set)."""
    return [(a, b, kind) for kind, a, b in _HELDOUT]


# Paraphrases in the held-out set's topics, written with it: what the guard's rules must still
# let through (a reworded question asks the same thing).
_HELDOUT_PARAPHRASES: list[tuple[str, str]] = [
    ("How do I pause my gym membership?", "How can I pause my gym membership?"),
    ("Should I promote the new intern?", "Do you think I should promote the new intern?"),
    ("Wake me up at 5.45am please.", "Please wake me up at 5:45 am."),
    ("Is 2 pints of beer too much before driving?", "Are 2 pints of beer too much before driving?"),
    ("Is 800 lumens bright enough for a desk lamp?", "Are 800 lumens enough light for a desk lamp?"),
    ("Which of these wild mushrooms are edible?", "Which of these wild mushrooms can be eaten safely?"),
    ("Give me a lentil soup recipe.", "Can you give me a recipe for lentil soup?"),
    ("How long should I boil quinoa?", "How long do I need to boil quinoa for?"),
    ("Is a tiger stronger than a gorilla?", "Is a tiger physically stronger than a gorilla?"),
    ("Migrate my blog from wordpress to ghost.", "Help me move my blog from wordpress to ghost."),
    ("Suggest a caffeine-free drink for the morning.", "What's a good caffeine-free drink for the morning?"),
    ("Why didn't the nightly backup succeed?", "Why did the nightly backup not succeed?"),
    ("Can guinea pigs eat carrots?", "Is it okay for guinea pigs to eat carrots?"),
    ("What's the population of Peru?", "How many people live in Peru?"),
    ("Is 100 joules a lot of energy?", "Is 100 joules a large amount of energy?"),
    ("How do I unarchive an email in Outlook?", "How can I unarchive an email in Outlook?"),
    ("Split a bill of 120 between 4 people.", "Divide a bill of 120 between 4 people."),
    ("Is dashcam footage admissible in court?", "Can dashcam footage be used as evidence in court?"),
    ("How often should I water a cactus?", "How frequently should a cactus be watered?"),
    ("I need to cancel my gym membership, how do I do it?", "How do I cancel my gym membership?"),
    (
        "We want to visit Japan in spring, what should we see?",
        "What should we see when we visit Japan in spring?",
    ),
    ("Is 85 decibels too loud for headphones?", "Are headphones at 85 decibels too loud?"),
    ("Is a root canal treatment painful?", "Does a root canal treatment hurt?"),
    ("Does espresso have more caffeine than cola?", "Is there more caffeine in espresso than in cola?"),
    ("What's the forecast for Thursday in Oslo?", "What is the weather forecast for Oslo on Thursday?"),
    ("Is table salt soluble in olive oil?", "Does table salt dissolve in olive oil?"),
    (
        "Translate good morning from Hindi to Korean.",
        "How do you say good morning in Korean if I know it in Hindi?",
    ),
    ("Is oat milk good for baking?", "Is oat milk a good choice for baking?"),
    ("What should I feed a sick goat?", "What is the best food for a sick goat?"),
    ("Schedule the call for 10:15 am Pacific time.", "Please schedule the call at 10:15 a.m. Pacific time."),
]


def heldout_paraphrase_pairs() -> list[tuple[str, str]]:
    """Paraphrases (expected cache hits) written with the held-out contrast set, in its topics."""
    return list(_HELDOUT_PARAPHRASES)
