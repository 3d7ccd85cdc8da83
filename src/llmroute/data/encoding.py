"""Messages for text files that are not UTF-8 (routing tables, price tables).

`encoding_error(path)` builds the `TableError` every reader raises when decoding fails: it
names the file, the line and column of the first byte that is not UTF-8, the encoding the file
looks like and how to re-save it.
"""

from __future__ import annotations

from pathlib import Path

from llmroute.data.table import TableError

__all__ = ["encoding_error"]


def _guess_encoding(data: bytes) -> tuple[str, str] | None:
    """(iconv name, description) of the encoding bytes that are not UTF-8 look like, or None."""
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "UTF-32", "UTF-32"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4096]:
        return "UTF-16", "UTF-16 (Excel's 'Unicode Text')"
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    return "WINDOWS-1252", "Windows-1252 (Western European; Excel's plain 'CSV' on Windows)"


def encoding_error(path: str | Path) -> TableError:
    """A TableError for a text table that is not valid UTF-8: file, line, column, a hint.

    Finds the first byte that is not UTF-8 (1-based line and character column), guesses the
    encoding the file looks like (UTF-16/32 from a byte-order mark or NUL bytes, else
    Windows-1252) and says how to re-save it. Returns a generic message if the file turns out
    to be valid UTF-8.
    """
    p = Path(path)
    data = p.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        pos = e.start
    else:
        return TableError(f"{p}: cannot decode the file as UTF-8")
    line_start = data.rfind(b"\n", 0, pos) + 1
    line = data.count(b"\n", 0, pos) + 1
    col = len(data[line_start:pos].decode("utf-8", errors="replace")) + 1
    guess = _guess_encoding(data)
    looks = f"the file looks like {guess[1]}" if guess else "the file's encoding is not recognised"
    how = "with 'CSV UTF-8' in a spreadsheet's Save As, or " if p.suffix.lower() == ".csv" else ""
    src = guess[0] if guess else "<its encoding>"
    return TableError(
        f"{p}: line {line}, column {col}: byte 0x{data[pos]:02x} is not valid UTF-8; {looks}. "
        f"Re-save it as UTF-8 ({how}`iconv -f {src} -t UTF-8 {p.name} > utf8-{p.name}`)"
    )
