"""Shared helper for benchmark scripts: rewrite one marked section of BENCHMARKS.md.

Each benchmark owns a section delimited by marker comments::

    <!-- quality:start -->
    ...generated markdown...
    <!-- quality:end -->

`update_section("quality", md)` replaces what lies between the markers (or appends a new
section, with a heading, at the end of the file when the markers are absent). Concurrent
writers are serialised with an advisory file lock and the file is replaced atomically, so
several benchmark scripts may run at the same time.

Usage from another script under benchmarks/::

    from _md import md_table, update_section
    update_section("gateway", md_table(["metric", "value"], rows), title="Gateway throughput")
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS_MD", "fmt", "md_table", "update_section"]

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import hashlib

    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"llmroute-bench-{digest}.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def replace_section(text: str, name: str, markdown: str, title: str | None = None) -> str:
    """Return `text` with section `name` replaced by `markdown` (appended if missing)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"section name must be [A-Za-z0-9_.-]+, got {name!r}")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _m: body, text, count=1)
    heading = f"## {title or name}\n\n"
    sep = "" if text.endswith("\n\n") or not text else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{sep}{heading}{body}\n"


def update_section(
    name: str, markdown: str, title: str | None = None, path: Path | str | None = None
) -> Path:
    """Replace the `<!-- name:start -->...<!-- name:end -->` block of BENCHMARKS.md with `markdown`.

    When the markers are absent, a new `## title` section (title defaults to `name`) is
    appended. Returns the path written.
    """
    target = Path(path) if path is not None else BENCHMARKS_MD
    with _locked(target):
        text = target.read_text(encoding="utf-8") if target.exists() else "# Benchmarks\n\n"
        new = replace_section(text, name, markdown, title)
        fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".md", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(new)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return target


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for a markdown table ('-' for None/NaN)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if abs(value) < 1e-9:
            value = 0.0
        if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e6):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; cells go through `fmt`."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(fmt(v, digits).replace("|", "\\|") for v in row) + " |")
    return "\n".join(out)
