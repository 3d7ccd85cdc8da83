"""Personal-data detection and redaction: fast regexes with checksums, optional Presidio.

Supported types (`PII_TYPES`): email, phone, card, iban (mod-97 checked, with per-country
lengths), ssn (US), nino (UK National Insurance number), ip (IPv4 and IPv6) and secret
(API-key-like tokens: OpenAI/Anthropic/AWS/GitHub/Slack/Google keys, JWTs, private-key blocks,
`password=...`-style assignments). Every pattern is guarded by a cheap substring or character
pre-check so that clean text costs a few microseconds.

What does not count, because it is a look-alike and not personal data:
- card: a digit string is a card only with a card's grouping (`CARD_GROUPINGS`: 4-4-4-4, 4-6-5
  Amex, 4-6-4 Diners, 4-4-4-4-3, or 13-19 digits ungrouped, one separator kind), a payment-card
  industry digit first (2-6) and a valid Luhn checksum. ISBNs (978-0-306-40615-7, 0-306-40615-2,
  9780306406157), order numbers and other groupings are not cards even when they pass Luhn.
- phone: fewer than 7 or more than 15 digits (arithmetic such as `2500+2500(1+x)`), and dates
  written like numbers (03-15-2024, 06.12.2023, 2024.03.15).
- ip: addresses that identify no host: 0.0.0.0, loopback 127.x.x.x, masks and broadcast
  (255.x.x.x); and version strings (v1.2.3.4). Private ranges (10.x, 192.168.x) still count:
  they name hosts inside an organisation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PII_TYPES: tuple[str, ...] = ("email", "phone", "card", "iban", "ssn", "nino", "ip", "secret")

# IBAN lengths per country (ISO 13616 registry, main SEPA and common countries).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
# Phones: international "+CC ..." forms, or national forms with separators ((555) 123-4567,
# 555-123-4567, 020 7946 0958, 06 12 34 56 78). Bare digit runs are not phones (too many
# false positives on arithmetic), except after a phone keyword.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"
    r"|\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4}"
    r"|0\d{1,4}(?:[ .-]\d{2,4}){2,4}"
    r")(?![\w-])"
)
_PHONE_KW = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call me|text me|whatsapp|fax)\b[^\d\n]{0,20}(\+?\d[\d\s().-]{6,18}\d)"
)
# Runs of digit groups joined by single spaces or hyphens; `_card_spans` checks the grouping.
_DIGIT_RUN = re.compile(r"(?<![\d.,-])\d+(?:[ -]\d+)*")
CARD_GROUPINGS: tuple[tuple[int, ...], ...] = ((4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3))
"""Digit groupings printed on payment cards (besides 13-19 digits without separators)."""
_CARD_SHAPES = ((0,), *sorted(CARD_GROUPINGS, key=len, reverse=True))  # (0,): ungrouped, 13-19 digits
_CARD_FIRST_DIGITS = frozenset(
    "23456"
)  # industry identifiers of payment cards (Mastercard 2/5, Amex 3, Visa 4, ...)
_IBAN = re.compile(r"\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}[- ](?!00)\d{2}[- ](?!0000)\d{4}(?![\d-])")
_NINO = re.compile(
    r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])"
    r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}:){0,5}[0-9a-fA-F]{1,4}(?![\w:])"
)
_SECRET = re.compile(
    r"(?:"
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"
    r"|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\bhf_[A-Za-z0-9]{30,}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"
    r")"
)
_SECRET_HINTS = ("sk-", "AKIA", "gh", "xox", "AIza", "hf_", "eyJ", "-----BEGIN")
_SECRET_ASSIGN = re.compile(
    r"(?i:\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password|passwd|client[_-]?secret)"
    r"\s*[:=]\s*[\"']?)[^\s\"']{8,}"
)
_ASSIGN_HINTS = ("key", "token", "passw", "secret")
_PHONE_HINTS = ("phone", "tel", "mobile", "cell", "call me", "text me", "whatsapp", "fax")


@dataclass(frozen=True)
class PIIMatch:
    """One detected span: its type, [start, end) offsets in the text and the matched string."""

    type: str
    start: int
    end: int
    text: str


def _ipv4_ok(text: str, start: int, end: int) -> bool:
    """A host's address: a valid dotted quad (octets <= 255, no leading zeros) not embedded in a
    longer number or a version string (v1.2.3.4), and not one that names no host (0.0.0.0,
    loopback 127.x, masks and broadcast 255.x)."""
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._"):
        return False
    if end < len(text) and (text[end].isdigit() or (text[end] == "." and text[end + 1 : end + 2].isdigit())):
        return False
    octets = text[start:end].split(".")
    for part in octets:
        if int(part) > 255 or (len(part) > 1 and part[0] == "0"):
            return False
    return octets[0] not in ("0", "127", "255")


def _card_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of digit sequences with a payment card's grouping, first digit and Luhn checksum."""
    out: list[tuple[int, int]] = []
    for m in _DIGIT_RUN.finditer(text):
        run = m.group()
        if len(run) < 13:
            continue
        parts = re.split(r"([ -])", run)
        groups, seps = parts[0::2], parts[1::2]
        starts = [m.start()]
        for g, sep in zip(groups, seps, strict=False):
            starts.append(starts[-1] + len(g) + len(sep))
        i = 0
        while i < len(groups):
            k = 0
            for shape in _CARD_SHAPES:
                n = len(shape)
                sizes = tuple(len(g) for g in groups[i : i + n])
                ok = sizes == shape or (n == 1 and 13 <= sizes[0] <= 19)
                if ok and len(set(seps[i : i + n - 1])) <= 1:
                    digits = "".join(groups[i : i + n])
                    if digits[0] in _CARD_FIRST_DIGITS and len(set(digits)) > 1 and luhn_ok(digits):
                        k = n
                        break
            if k:
                out.append((starts[i], starts[i + k - 1] + len(groups[i + k - 1])))
                i += k
            else:
                i += 1
    return out


def _is_date(groups: list[str]) -> bool:
    """Three numeric groups that read as a date: dd-mm-yyyy, mm-dd-yyyy or yyyy-mm-dd (also . and /)."""
    if len(groups) != 3:
        return False
    sizes = tuple(len(g) for g in groups)
    a, b, c = (int(g) for g in groups)
    if sizes == (4, 2, 2):
        return 1000 <= a <= 2999 and 1 <= b <= 12 and 1 <= c <= 31
    if sizes in ((2, 2, 4), (1, 2, 4), (2, 1, 4), (1, 1, 4)):
        return 1000 <= c <= 2999 and ((1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31))
    return False


def _phone_ok(match: str) -> bool:
    """7-15 digits (the length of a real number) and not a date written with separators."""
    groups = re.findall(r"\d+", match)
    n = sum(len(g) for g in groups)
    return 7 <= n <= 15 and not _is_date(groups)


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a digit string (payment cards)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 IBAN check: known country length and mod-97 == 1."""
    s = iban.replace(" ", "").upper()
    if len(s) < 15 or IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


class PIIDetector:
    """Finds personal data in text.

    types: the subset of `PII_TYPES` to look for (default all). use_presidio: also run
    Microsoft Presidio's analyzer when the package is installed (slow; off by default).
    """

    def __init__(self, types: Iterable[str] | None = None, use_presidio: bool = False) -> None:
        self.types = tuple(types) if types is not None else PII_TYPES
        unknown = sorted(set(self.types) - set(PII_TYPES))
        if unknown:
            raise ValueError(f"unknown PII type(s) {unknown}; supported: {list(PII_TYPES)}")
        self.use_presidio = use_presidio
        self._presidio = None

    # ---- detection ------------------------------------------------------------------------
    def find(self, text: str) -> list[PIIMatch]:
        """All non-overlapping PII spans in `text`, by start offset (longer span wins overlaps)."""
        if not text:
            return []
        want = self.types
        found: list[PIIMatch] = []
        has_digit = any(c.isdigit() for c in text)
        if "email" in want and "@" in text:
            found += [PIIMatch("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
        lower = text.lower()
        if "secret" in want:
            if any(h in text for h in _SECRET_HINTS):
                found += [PIIMatch("secret", m.start(), m.end(), m.group()) for m in _SECRET.finditer(text)]
            if any(h in lower for h in _ASSIGN_HINTS):
                found += [
                    PIIMatch("secret", m.start(), m.end(), m.group()) for m in _SECRET_ASSIGN.finditer(text)
                ]
        if has_digit:
            if "card" in want:
                found += [PIIMatch("card", a, b, text[a:b]) for a, b in _card_spans(text)]
            if "iban" in want:
                for m in _IBAN.finditer(text):
                    if iban_ok(m.group(1)):
                        found.append(PIIMatch("iban", m.start(1), m.end(1), m.group(1)))
            if "ssn" in want:
                found += [PIIMatch("ssn", m.start(), m.end(), m.group()) for m in _SSN.finditer(text)]
            if "nino" in want:
                found += [PIIMatch("nino", m.start(), m.end(), m.group()) for m in _NINO.finditer(text)]
            if "ip" in want:
                if "." in text:
                    found += [
                        PIIMatch("ip", m.start(), m.end(), m.group())
                        for m in _IPV4.finditer(text)
                        if _ipv4_ok(text, m.start(), m.end())
                    ]
                if "::" in text or text.count(":") >= 7:
                    found += [PIIMatch("ip", m.start(), m.end(), m.group()) for m in _IPV6.finditer(text)]
            if "phone" in want:
                found += [
                    PIIMatch("phone", m.start(), m.end(), m.group())
                    for m in _PHONE.finditer(text)
                    if _phone_ok(m.group())
                ]
                if any(h in lower for h in _PHONE_HINTS):
                    found += [
                        PIIMatch("phone", m.start(1), m.end(1), m.group(1))
                        for m in _PHONE_KW.finditer(text)
                        if _phone_ok(m.group(1))
                    ]
        if self.use_presidio:
            found += self._presidio_find(text)
        return _resolve_overlaps(found)

    def types_in(self, text: str) -> list[str]:
        """Sorted distinct PII types present in `text`."""
        return sorted({m.type for m in self.find(text)})

    def redact(self, text: str, template: str = "[{type}]") -> tuple[str, list[PIIMatch]]:
        """`text` with every span replaced by `template.format(type=TYPE)`, and the spans."""
        matches = self.find(text)
        if not matches:
            return text, []
        out, pos = [], 0
        for m in matches:
            out.append(text[pos : m.start])
            out.append(template.format(type=m.type.upper()))
            pos = m.end
        out.append(text[pos:])
        return "".join(out), matches

    def _presidio_find(self, text: str) -> list[PIIMatch]:
        try:
            if self._presidio is None:
                from presidio_analyzer import AnalyzerEngine  # optional dependency

                self._presidio = AnalyzerEngine()
        except Exception:  # not installed or no language model: regexes only
            self.use_presidio = False
            return []
        mapping = {
            "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "card",
            "IBAN_CODE": "iban", "US_SSN": "ssn", "UK_NINO": "nino", "IP_ADDRESS": "ip",
        }  # fmt: skip
        out = []
        for r in self._presidio.analyze(text=text, language="en"):
            t = mapping.get(r.entity_type)
            if t in self.types:
                out.append(PIIMatch(t, r.start, r.end, text[r.start : r.end]))
        return out


_PRIORITY = {t: i for i, t in enumerate(("secret", "email", "iban", "card", "ssn", "nino", "ip", "phone"))}


def _resolve_overlaps(found: list[PIIMatch]) -> list[PIIMatch]:
    if len(found) <= 1:
        return found
    found.sort(key=lambda m: (m.start, -(m.end - m.start), _PRIORITY.get(m.type, 99)))
    # Prefer by type priority among spans that overlap, then by length.
    ranked = sorted(found, key=lambda m: (_PRIORITY.get(m.type, 99), -(m.end - m.start), m.start))
    taken: list[PIIMatch] = []
    for m in ranked:
        if all(m.end <= t.start or m.start >= t.end for t in taken):
            taken.append(m)
    taken.sort(key=lambda m: m.start)
    return taken
