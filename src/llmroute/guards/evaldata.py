"""Project-written, generated PII evaluation data: every supported type inside realistic sentences.

Values are synthetic (valid checksums where the type has one: Luhn for cards, mod-97 for IBANs);
none belongs to a real person. `pii_examples(n_per_type)` -> list of (sentence, type, value).
`clean_sentences()` gives PII-free look-alikes (numbers, dates, versions) for false positives.
"""

from __future__ import annotations

import random
import string

from llmroute.guards.pii import IBAN_LENGTHS

_FIRST = ["alice", "bob", "carla", "deepak", "elena", "farid", "grace", "hiro", "ines", "jon"]
_LAST = ["smith", "nguyen", "garcia", "mueller", "rossi", "kowalski", "tanaka", "okafor", "dubois"]
_DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "uni-example.edu", "example.co.uk"]

_TEMPLATES: dict[str, list[str]] = {
    "email": ["Please send the invoice to {v} by Friday.", "My email is {v}, reach me there.",
              "Contact: {v}", "Can you draft a reply to {v} declining the meeting?",
              "cc {v} on the thread about the Q3 budget"],
    "phone": ["Call me at {v} after 5pm.", "My phone number is {v}.", "The office line is {v}, ask for Sam.",
              "Text {v} when you arrive.", "Emergency contact: {v}"],
    "card": ["My card number is {v}, expiry 04/27.", "Charge it to {v} please.",
             "Why was my card {v} declined?", "Payment details: {v}"],
    "iban": ["Please wire the deposit to {v}.", "My IBAN is {v} for the refund.",
             "Bank account (IBAN): {v}", "Transfer 200 euros to {v} today."],
    "ssn": ["My social security number is {v}.", "SSN: {v}, date of birth 1985-03-12.",
            "Fill the form with SSN {v} for the applicant."],
    "nino": ["My National Insurance number is {v}.", "NI number: {v}", "Payroll needs NINO {v} for the new hire."],
    "ip": ["The server at {v} keeps timing out.", "Block traffic from {v} in the firewall.",
           "ssh into {v} and restart nginx", "Our VPN gateway is {v}."],
    "secret": ["Here is my API key {v} — why does it fail?", "export OPENAI_API_KEY={v}",
               "My config has {v} in it, is that safe?", "The token {v} stopped working."],
}  # fmt: skip


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _iban(country: str, rng: random.Random) -> str:
    n = IBAN_LENGTHS[country]
    bban = "".join(rng.choice(string.digits + (string.ascii_uppercase if country in ("GB", "NL") else ""))
                   for _ in range(n - 4))  # fmt: skip
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + bban[4:]
    num = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(num) % 97
    s = f"{country}{check:02d}{bban}"
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4)) if rng.random() < 0.6 else s


def _value(t: str, rng: random.Random) -> str:
    if t == "email":
        sep = rng.choice([".", "_", ""])
        return f"{rng.choice(_FIRST)}{sep}{rng.choice(_LAST)}{rng.randint(1, 99) if rng.random() < 0.3 else ''}@{rng.choice(_DOMAINS)}"
    if t == "phone":
        f = rng.randrange(6)
        d = lambda k: "".join(rng.choice(string.digits) for _ in range(k))  # noqa: E731
        return [
            f"+1 {rng.randint(201, 989)} {d(3)} {d(4)}", f"({rng.randint(201, 989)}) {d(3)}-{d(4)}",
            f"{rng.randint(201, 989)}-{d(3)}-{d(4)}", f"+44 20 {d(4)} {d(4)}",
            f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", f"+49 30 {d(8)}",
        ][f]  # fmt: skip
    if t == "card":
        prefix, length = rng.choice([("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("4", 13)])
        num = _luhn_complete(prefix, length, rng)
        style = rng.randrange(3)
        if style == 0:
            return num
        sep = " " if style == 1 else "-"
        groups = [4, 6, 5] if length == 15 else [4] * (length // 4) + ([length % 4] if length % 4 else [])
        out, i = [], 0
        for g in groups:
            out.append(num[i : i + g])
            i += g
        return sep.join(out)
    if t == "iban":
        return _iban(rng.choice(["DE", "GB", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "PL"]), rng)
    if t == "ssn":
        a = rng.choice([x for x in range(1, 900) if x != 666])
        return f"{a:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if t == "nino":
        first = rng.choice("ABCEGHJKLMNOPRSTWXYZ")
        second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
        if first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
            first, second = "A", "B"
        digits = "".join(rng.choice(string.digits) for _ in range(6))
        sp = " " if rng.random() < 0.5 else ""
        return f"{first}{second}{sp}{digits[:2]}{sp}{digits[2:4]}{sp}{digits[4:]}{sp}{rng.choice('ABCD')}"
    if t == "ip":
        if rng.random() < 0.75:
            return ".".join(str(rng.randint(1, 254)) for _ in range(4))
        return ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))
    if t == "secret":
        alnum = string.ascii_letters + string.digits
        r = lambda k: "".join(rng.choice(alnum) for _ in range(k))  # noqa: E731
        return rng.choice([
            f"sk-{r(40)}", f"sk-proj-{r(48)}", f"AKIA{''.join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))}",
            f"ghp_{r(36)}", f"xoxb-{rng.randint(10**9, 10**10)}-{r(24)}", f"AIza{r(35)}",
            f"eyJ{r(20)}.eyJ{r(30)}.{r(43)}",
        ])  # fmt: skip
    raise ValueError(t)


def pii_examples(n_per_type: int = 200, seed: int = 0) -> list[tuple[str, str, str]]:
    """(sentence, type, value) with `n_per_type` sentences per supported PII type."""
    rng = random.Random(seed)
    out = []
    for t, templates in _TEMPLATES.items():
        for _ in range(n_per_type):
            v = _value(t, rng)
            out.append((rng.choice(templates).format(v=v), t, v))
    return out


def clean_sentences() -> list[str]:
    """PII-free sentences full of look-alike numbers (must not be flagged)."""
    return [
        "The meeting is on 2024-03-15 at 10:30 in room 204.",
        "Python 3.11.4 fixed the bug; upgrade from 3.10.2.",
        "Compute 1234 * 5678 and then add 91011.",
        "The population grew from 1,250,000 to 1,310,500 between 2019 and 2021.",
        "Order #4829-1173 shipped in 3 boxes weighing 12.5 kg.",
        "Set the learning rate to 0.001 and batch size to 256 for 10 epochs.",
        "Version 1.2.3 of the library requires numpy>=1.26.",
        "Use ISBN 978-0-13-468599-1 for the citation.",
        "Flight AF 1234 departs at 07:45 from gate B12.",
        "The chemical formula C6H12O6 has a molar mass of 180.16 g/mol.",
        "Call the function twice with arguments 3 and 4.",
        "In 1969, 600 million people watched the Moon landing.",
    ]
