"""'Critical tokens': the parts of a prompt a paraphrase must keep for a cached answer to be reusable.

Two prompts may share a cached response only when their critical signatures are equal:
numbers (digits and number words, normalised: "2,000" == "2000", "two" == "2"), negations
("not", "n't", "never", "without", ...), polarity / direction words ("on" / "off", "increase" /
"decrease", "before" / "after", ...), dates (month and weekday names, normalised), and named
entities (capitalised words that are not common sentence words, acronyms, alphanumeric codes
such as "GPT-4" or "A100"). Embedding similarity alone confuses "turn on" with "turn off" and
"2019" with "2020"; this signature makes those contrasts a guaranteed miss.

Also (issue 11): negation by prefix or suffix as a rule ("un-"/"non-" before any word,
"in-"/"im-"/"il-"/"ir-"/"dis-" before a list of common stems, "-less"), clock times' am/pm, units
(normalised: "km" == "kilometres"; a single letter counts only right after a number or "°"),
lower-case words whose identity is the question (diets, proteins, animals, colours, materials),
antonym actions (cancel/renew, hire/fire, join/leave, ...), and ORDER: `signature` appends the
sequence of entities, units, numbers and dates in the order they appear, and the two sides of a
comparison ("A faster than B"), conversion ("convert A to B") or move ("from A to B"), so swapping
them is a miss.

The lists above were built on the project's development contrast pairs
(`llmroute.cache.evaldata.contrast_pairs`). What carries pairs they have never seen
(`heldout_contrast_pairs`, whose distinguishing words are in none of the lists) are general rules:
a word outside a general English vocabulary (the shipped encoder's 30k WordPiece words) is a
name ("quinoa" vs "couscous"); the word after a number is its unit ("2 pints" vs "2 quarts");
the verb after "I"/"we" is the user's action ("how do I pause" vs "how do I resume"); "in-",
"im-", "il-", "ir-", "dis-" negate any vocabulary adjective ("edible"/"inedible"), "-free" too;
negations are counted, not just noted; clock times accept "7.30pm".
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources

_NUM_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50",
    "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100",
    "thousand": "1000", "million": "1e6", "billion": "1e9", "dozen": "12", "half": "0.5",
    "first": "1st", "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th", "once": "1x",
    "twice": "2x", "double": "2x", "triple": "3x", "single": "1x", "both": "both",
}  # fmt: skip
_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
    "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt",
    "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "mustnt", "neednt", "avoid", "except",
    "exclude", "excluding", "lack", "lacks", "absent", "refuse", "fail", "fails", "stop", "unless",
}  # fmt: skip
# Polarity / direction / comparison words, grouped by the contrast they express; a word maps
# to its group-and-pole, so synonyms on the same pole still match ("raise" == "increase").
_POLARITY_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("on", "enable", "enabled", "activate", "start", "open", "unlock", "connect", "mount"),
     ("off", "disable", "disabled", "deactivate", "stop", "close", "lock", "disconnect", "unmount")),
    (("up", "increase", "raise", "higher", "more", "add", "grow", "maximum", "max", "upgrade", "larger",
      "bigger", "longer", "faster", "above", "over", "plus", "gain"),
     ("down", "decrease", "lower", "reduce", "less", "fewer", "remove", "shrink", "minimum", "min",
      "downgrade", "smaller", "shorter", "slower", "below", "under", "minus", "loss")),
    (("before", "earlier", "prior", "past", "previous", "ago", "last"),
     ("after", "later", "next", "future", "upcoming", "following")),
    (("buy", "import", "download", "receive", "input", "inbound"),
     ("sell", "export", "upload", "send", "output", "outbound")),
    (("left", "west", "north", "inside", "internal", "front", "top", "first", "begin", "beginning"),
     ("right", "east", "south", "outside", "external", "back", "bottom", "end", "ending", "final")),
    (("true", "yes", "correct", "valid", "allow", "accept", "include", "pro", "positive", "best"),
     ("false", "incorrect", "invalid", "deny", "reject", "exclude", "con", "against", "negative", "worst")),
    (("hot", "warm", "heat", "summer", "day"), ("cold", "cool", "freeze", "winter", "night")),
    (("encrypt", "compress", "encode", "serialize", "zip"),
     ("decrypt", "decompress", "decode", "deserialize", "unzip")),
    (("install", "create", "insert", "push", "save", "write", "login"),
     ("uninstall", "delete", "drop", "pull", "load", "read", "logout")),
    (("male", "man", "men", "boy", "he", "his", "father", "husband"),
     ("female", "woman", "women", "girl", "she", "her", "mother", "wife")),
    (("asc", "ascending", "increasing"), ("desc", "descending", "decreasing")),
    (("renew", "subscribe", "join", "hire", "deposit", "approve", "extend", "enroll", "enrol", "register",
      "attach", "follow", "borrow", "win", "arrive", "attack", "keep", "accept"),
     ("cancel", "unsubscribe", "leave", "fire", "withdraw", "disapprove", "terminate", "quit", "resign",
      "unregister", "detach", "unfollow", "lend", "lose", "depart", "defend", "discard", "decline")),
)  # fmt: skip
_POLARITY: dict[str, str] = {}
for _gi, (_pos, _neg) in enumerate(_POLARITY_GROUPS):
    for _w in _pos:
        _POLARITY.setdefault(_w, f"p{_gi}+")
    for _w in _neg:
        _POLARITY.setdefault(_w, f"p{_gi}-")
_MONTHS = {
    "january": "m01", "jan": "m01", "february": "m02", "feb": "m02", "march": "m03", "april": "m04",
    "apr": "m04", "may": "m05", "june": "m06", "jun": "m06", "july": "m07", "jul": "m07",
    "august": "m08", "aug": "m08", "september": "m09", "sep": "m09", "sept": "m09", "october": "m10",
    "oct": "m10", "november": "m11", "nov": "m11", "december": "m12", "dec": "m12",
    "monday": "d1", "tuesday": "d2", "wednesday": "d3", "thursday": "d4", "friday": "d5",
    "saturday": "d6", "sunday": "d7", "today": "today", "tomorrow": "tomorrow", "yesterday": "yesterday",
    "tonight": "tonight", "weekend": "weekend",
}  # fmt: skip
# Common words that start sentences or questions capitalised and are not entities.
_COMMON = set(
    """a an the i i'm i've i'd i'll what whats what's how hows how's why when where which who whom whose is are
    was were be been do does did can could would should will shall may might must please tell give show
    explain describe write list name find make create summarize summarise translate compare define
    calculate compute solve help suggest recommend generate convert check fix draft outline provide
    let let's lets so and or but if then also hey hi hello thanks thank okay ok yes no my your our their
    its it it's this that these those there here in on at for of to from by with about as into over
    under some any all each every many much more most few other another such same different new old
    good best great quick simple short brief detailed im ive id could you me we they he she us them
    in-depth step steps by-step tips ways way guide overview example examples question answer
    is there are there do you can you what's the turn switch set get put keep go run use try take
    see look read say work change move build plan prepare rewrite rephrase improve review edit analyze
    analyse discuss evaluate estimate predict identify classify extract sort count measure""".split()  # noqa: SIM905
)
# Lower-case names people type without capitals (languages, tools, units, currencies).
_LEXICON = set(
    """python java javascript typescript rust golang ruby php perl kotlin swift scala haskell
    c++ c# sql mysql postgres postgresql sqlite mongodb redis react vue angular django flask
    fastapi numpy pandas pytorch tensorflow docker kubernetes linux windows macos android ios
    git bash powershell excel html css json yaml xml csv pdf aws azure gcp
    km kilometers kilometres miles meters metres feet inches cm mm kg kilograms pounds lbs grams
    ounces liters litres gallons celsius fahrenheit kelvin hours minutes seconds days weeks
    months years dollars euros pounds yen usd eur gbp bitcoin""".split()  # noqa: SIM905
)
# Words whose identity is the question although people type them in lower case.
_KINDS = set(
    """vegan vegetarian keto paleo halal kosher gluten-free dairy-free pescatarian beef pork chicken lamb
    turkey duck fish salmon tuna cod shrimp prawn prawns tofu tempeh steak bacon ham mutton venison
    cat cats dog dogs rabbit hamster horse parrot puppy kitten ferret goldfish snake
    red green blue yellow black white brown grey gray pink purple orange navy beige
    wood wooden steel marble granite glass plastic leather cotton wool silk aluminium aluminum copper
    iron concrete quartz""".split()  # noqa: SIM905
)
# Units, normalised (a single letter only right after a number or a degree sign).
_UNITS: dict[str, str] = {}
for _canon, _names in {
    "km": "km kilometer kilometers kilometre kilometres",
    "mi": "mi mile miles",
    "m": "m meter meters metre metres",
    "cm": "cm centimeter centimeters centimetre centimetres",
    "mm": "mm millimeter millimeters millimetre millimetres",
    "ft": "ft foot feet",
    "in": "inch inches",
    "yd": "yd yard yards",
    "g": "g gram grams gramme grammes",
    "kg": "kg kilo kilos kilogram kilograms",
    "mg": "mg milligram milligrams",
    "mcg": "mcg µg microgram micrograms",
    "lb": "lb lbs pound pounds",
    "oz": "oz ounce ounces",
    "ml": "ml milliliter milliliters millilitre millilitres",
    "l": "l liter liters litre litres",
    "gal": "gal gallon gallons",
    "tsp": "tsp teaspoon teaspoons",
    "tbsp": "tbsp tablespoon tablespoons",
    "cup": "cup cups",
    "degc": "c celsius centigrade",
    "degf": "f fahrenheit",
    "degk": "k kelvin",
    "kb": "kb kilobyte kilobytes",
    "mb": "mb megabyte megabytes",
    "gb": "gb gigabyte gigabytes",
    "tb": "tb terabyte terabytes",
    "kbps": "kbps",
    "mbps": "mbps",
    "gbps": "gbps",
    "hz": "hz hertz",
    "khz": "khz",
    "mhz": "mhz",
    "ghz": "ghz",
    "w": "w watt watts",
    "kw": "kw kilowatt kilowatts",
    "kwh": "kwh",
    "v": "v volt volts",
    "mph": "mph",
    "kph": "kph kmh",
    "ms": "ms millisecond milliseconds",
    "h": "hr hrs hour hours",
    "min": "min mins minute minutes",
    "ha": "ha hectare hectares",
    "acre": "acre acres",
    "psi": "psi",
}.items():
    for _n in _names.split():
        _UNITS[_n] = _canon
# Stems that "in-", "im-", "il-", "ir-" and "dis-" negate ("un-" and "non-" negate any word).
_NEG_STEMS = set(
    """possible legal polite secure valid correct complete active accurate sufficient efficient visible
    capable direct dependent consistent compatible mature moral mortal patient perfect proper practical
    probable logical literate regular relevant responsible rational reversible replaceable agree allow
    approve like honest able appear connect continue obey qualify satisfied loyal comfort order organized
    organised advantage credible flexible formal finite accessible adequate appropriate convenient
    sensitive stable tolerant""".split()  # noqa: SIM905
)
_NOT_UN = {"until", "uncle", "unless", "unanimous", "unto", "unit", "units", "union", "unions", "unique",
           "unity", "unify", "uniform", "unicode", "unicorn", "unix", "unison", "universe", "universal",
           "university", "undo"}  # fmt: skip
_NOT_LESS = {"unless", "nevertheless", "regardless", "nonetheless", "bless"}
_CLOCK = re.compile(r"(?<![\w.])(\d{1,2}(?:[:.]\d{2})?)\s*([ap])\.?\s?m\b\.?", re.IGNORECASE)
_COMPARE = {"than"}
_CONVERT = {"convert", "converting", "translate", "translating", "change", "changing", "cast", "casting",
            "switch", "switching", "migrate", "migrating", "port", "transform", "turn", "exchange", "swap"}  # fmt: skip
_DIRECTION = {"to", "into"}
_SKIP_COMPARE = {"more", "less", "much", "far", "way", "even", "a", "lot", "bit", "any"}
# Negating prefixes follow English assimilation: "im-" before b/m/p, "il-" before l, "ir-" before r.
_PREFIX_NEXT = {"in": "", "im": "bmp", "il": "l", "ir": "r", "dis": ""}
# Adjective endings: a prefix negates an unlisted stem only when the stem is a whole word of the
# general vocabulary (`_vocab`) with one of these endings (inedible, insignificant, impartial).
_ADJ_END = re.compile(r"(?:able|ible|ble|ive|ent|ant|ous|al|ic|ful|ure|ite|ete|id)$")
# The user's own action: the verb after "I"/"we" (skipping auxiliaries, negators and -ly adverbs).
_SUBJECT = {"i", "we", "i'm", "i've", "i'd", "i'll", "we're", "we've", "we'd", "we'll"}
_AUX = {"am", "is", "are", "was", "were", "be", "been", "do", "does", "did", "can", "could", "should",
        "would", "will", "shall", "may", "might", "must", "have", "has", "had", "to", "need", "needs",
        "want", "wants", "just", "also", "still", "ever", "even", "really", "actually", "first", "then",
        "now", "please", "only", "always", "sometimes", "often", "usually"}  # fmt: skip
# Function words that cannot be the action ("how do I do it?": "do" is skipped, "it" is no action).
_NOT_ACTION = {"it", "this", "that", "these", "those", "them", "so", "the", "a", "an", "there", "here",
               "my", "your", "our", "their", "his", "her", "its", "and", "or", "but", "if", "what", "how",
               "why", "when", "where", "which", "who"}  # fmt: skip
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’\-]*[A-Za-z0-9]|[A-Za-z]\+\+|[A-Za-z]#?|\d[\d,]*(?:\.\d+)?%?|[$€£¥]")
_ALNUM_CODE = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9\-]+$")


@functools.cache
def _vocab() -> frozenset[str]:
    """The whole words of the shipped encoder's WordPiece vocabulary (30,522 entries of general
    English, lower case): a stand-in for "a common word". Loaded once, on first use."""
    path = resources.files("llmroute") / "assets" / "static-minilm" / "tokenizer.json"
    vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    return frozenset(w for w in vocab if w.isalpha())


def warm() -> None:
    """Load the vocabulary now (once per process, tens of ms) so that the first request does not."""
    _vocab()


def _rare(bare: str) -> bool:
    """A word outside the general vocabulary (nor its singular): a name or a specific thing
    (quinoa, iguana, dashcam) that a paraphrase keeps and a contrast swaps."""
    if len(bare) < 4 or not bare.isalpha() or bare in _COMMON:
        return False
    vocab = _vocab()
    if bare in vocab:
        return False
    return not any(bare.endswith(suf) and bare[: -len(suf)] in vocab for suf in ("s", "es"))


def _norm_number(tok: str) -> str:
    t = tok.replace(",", "").rstrip("%")
    try:
        f = float(t)
        s = str(int(f)) if f == int(f) else repr(f)
    except ValueError:
        s = t
    return s + ("%" if tok.endswith("%") else "")


def _prefix_negated(bare: str) -> bool:
    """`bare` negates a word by prefix or suffix: unsafe, non-alcoholic, impossible, harmless."""
    if bare.startswith("non") and (bare[3:4] == "-" or (len(bare) >= 7 and bare not in ("nonetheless",))):
        return True
    if (
        bare.startswith("un")
        and len(bare) >= 5
        and bare not in _NOT_UN
        and not bare.startswith(("under", "uni"))
    ):
        return True
    for prefix, nxt in _PREFIX_NEXT.items():
        if not bare.startswith(prefix):
            continue
        stem = bare[len(prefix) :].lstrip("-")
        if stem in _NEG_STEMS:
            return True
        if len(stem) >= 4 and (not nxt or stem[0] in nxt) and _ADJ_END.search(stem) and stem in _vocab():
            return True
    return bare.endswith("less") and len(bare) >= 7 and bare not in _NOT_LESS


def _scan(text: str) -> tuple[set[str], list[str], list[str]]:
    """(critical tokens, those of them whose order counts in text order, lower-case words)."""
    out: set[str] = set()
    order: list[str] = []
    words: list[str] = []
    negations = 0  # counted: "not unsafe" is not "unsafe", and a false prefix match cannot hide a "not"
    for m in _CLOCK.finditer(text):  # "7 am", "7:30 p.m.", "7.30pm": the number and the half of the day
        tag = "@" + m.group(2).lower() + "m"
        out.add(tag)
        order.append(tag)
    text = _CLOCK.sub(lambda m: f" {m.group(1)} ", text)
    prev_number = False  # the previous token was a number ("3", "three"): this word is its unit
    subject = False  # the previous words were "I"/"we" (+ auxiliaries): this word is the user's action
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[0].isdigit():
            t = "#" + _norm_number(tok)
            out.add(t)
            order.append(t)
            prev_number = True
            continue
        if tok in ("$", "€", "£", "¥"):
            out.add(tok)
            continue
        low = tok.lower().replace("’", "'")
        bare = low.replace("'", "")
        words.append(bare)
        before = text[: m.start()].rstrip()
        after_number = bool(before) and (before[-1].isdigit() or before[-1] == "°")
        unit_slot, prev_number = prev_number, False
        if subject and not (low in _AUX or low.endswith("n't") or bare in _NEGATIONS or low.endswith("ly")):
            # "how do I pause ..." vs "how do I resume ...": the action is the question
            if bare not in _NOT_ACTION:
                out.add("A" + bare)
            subject = False
        subject = subject or low in _SUBJECT
        t = ""
        if low.endswith("n't") or bare in _NEGATIONS:
            negations += 1
        elif bare in _NUM_WORDS:
            out.add("#" + _NUM_WORDS[bare])
            prev_number = _NUM_WORDS[bare].isdigit()
        elif bare in _MONTHS and (bare not in ("may", "march") or tok[0].isupper()):
            t = "@" + _MONTHS[bare]
        elif bare in _UNITS and (len(bare) > 1 or after_number):
            t = "U" + _UNITS[bare]
        elif bare in _POLARITY:
            out.add(_POLARITY[bare])
        elif bare.endswith("-free") and len(bare) > 5:  # "caffeine-free": without caffeine
            negations += 1
            t = "E" + bare[:-5]
        elif _prefix_negated(bare):
            negations += 1
        elif unit_slot and bare in ("degree", "degrees"):  # "30 degrees Celsius" == "30°C"
            prev_number = True
        elif unit_slot and low not in _COMMON:  # any unit or counted thing: "2 pints" vs "2 quarts"
            t = "U" + (bare[:-1] if bare.endswith("s") and len(bare) > 3 else bare)
        elif low in _LEXICON or low in _KINDS or _ALNUM_CODE.match(tok) or _rare(bare):
            t = "E" + low
        elif tok[0].isupper() and low not in _COMMON:
            t = "E" + low  # at a sentence start too: "Paris ..." vs "London ..." must differ
        if t:
            out.add(t)
            order.append(t)
    if negations:
        out.add("neg" if negations == 1 else f"neg{negations}")
    return out, order, words


def critical_tokens(text: str) -> frozenset[str]:
    """The normalised critical-token set of `text` (see the module docstring)."""
    return frozenset(_scan(text)[0])


def _content(words: list[str], start: int, step: int, skip: set[str]) -> str:
    """The first word from `start` going `step` that is neither common nor in `skip`."""
    i = start
    while 0 <= i < len(words):
        w = words[i]
        if w not in _COMMON and w not in skip and w not in _NEGATIONS:
            return w
        i += step
    return ""


def _relations(words: list[str]) -> list[str]:
    """The two sides of each comparison ("A faster than B"), conversion ("convert A to B") and
    move ("from A to B")."""
    out: list[str] = []
    for i, w in enumerate(words):
        if w in _COMPARE:  # skip the comparative itself ("faster", "more expensive")
            j = i - 2
            while j >= 0 and words[j] in _SKIP_COMPARE:
                j -= 1
            left, right = _content(words, j, -1, _SKIP_COMPARE), _content(words, i + 1, 1, _SKIP_COMPARE)
            if left or right:
                out.append(f"R{left}>{right}")
        elif w in _CONVERT or w == "from":  # "convert A to B", "from A to B"
            k = next((k for k in range(i + 1, len(words)) if words[k] in _DIRECTION), None)
            if k is not None:
                left, right = _content(words, i + 1, 1, _DIRECTION), _content(words, k + 1, 1, set())
                if left or right:
                    out.append(f"R{left}>{right}")
    return out


def signature(text: str) -> str:
    """A stable string form of the critical tokens of `text` (sorted, `|`-joined), then `~` and
    the order-sensitive part: entities, units, numbers and dates in text order (first occurrence)
    and the sides of comparisons and conversions."""
    out, order, words = _scan(text)
    seq = list(dict.fromkeys(order))
    rel = _relations(words)
    return "|".join(sorted(out)) + ("~" + ",".join(seq + rel) if len(seq) > 1 or rel else "")
