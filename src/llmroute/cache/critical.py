"""'Critical tokens': the parts of a prompt a paraphrase must keep for a cached answer to be reusable.

Two prompts may share a cached response only when their critical signatures are equal:
numbers (digits and number words, normalised: "2,000" == "2000", "two" == "2"), negations
("not", "n't", "never", "without", ...), polarity / direction words ("on" / "off", "increase" /
"decrease", "before" / "after", ...), dates (month and weekday names, normalised), and named
entities (capitalised words that are not common sentence words, acronyms, alphanumeric codes
such as "GPT-4" or "A100"). Embedding similarity alone confuses "turn on" with "turn off" and
"2019" with "2020"; this signature makes those contrasts a guaranteed miss.
"""

from __future__ import annotations

import re

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
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’\-]*[A-Za-z0-9]|[A-Za-z]\+\+|[A-Za-z]#?|\d[\d,]*(?:\.\d+)?%?|[$€£¥]")
_ALNUM_CODE = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9\-]+$")


def _norm_number(tok: str) -> str:
    t = tok.replace(",", "").rstrip("%")
    try:
        f = float(t)
        s = str(int(f)) if f == int(f) else repr(f)
    except ValueError:
        s = t
    return s + ("%" if tok.endswith("%") else "")


def critical_tokens(text: str) -> frozenset[str]:
    """The normalised critical-token set of `text` (see the module docstring)."""
    out: set[str] = set()
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[0].isdigit():
            out.add("#" + _norm_number(tok))
            continue
        if tok in ("$", "€", "£", "¥"):
            out.add(tok)
            continue
        low = tok.lower().replace("’", "'")
        bare = low.replace("'", "")
        if low.endswith("n't") or bare in _NEGATIONS:
            out.add("neg")
        elif bare in _NUM_WORDS:
            out.add("#" + _NUM_WORDS[bare])
        elif bare in _MONTHS and (bare not in ("may", "march") or tok[0].isupper()):
            out.add("@" + _MONTHS[bare])
        elif bare in _POLARITY:
            out.add(_POLARITY[bare])
        elif low in _LEXICON or _ALNUM_CODE.match(tok):
            out.add("E" + low)
        elif tok[0].isupper() and low not in _COMMON:
            out.add("E" + low)  # at a sentence start too: "Paris ..." vs "London ..." must differ
    return frozenset(out)


def signature(text: str) -> str:
    """A stable string form of `critical_tokens(text)` (sorted, `|`-joined)."""
    return "|".join(sorted(critical_tokens(text)))
