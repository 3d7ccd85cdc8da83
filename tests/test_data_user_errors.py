"""Errors a new user hits with their own files: no internal columns, encodings explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.data import TableError, load_prices, load_table

runner = CliRunner()
INTERNAL = ("_row", "_file")


def _error(path: Path) -> str:
    with pytest.raises(TableError) as info:
        load_table(path)
    return str(info.value)


BAD_TABLES = {
    "missing_quality.csv": "prompt_id,prompt,model\np1,hi,a\n",
    "missing_quality.jsonl": '{"prompt_id": "p1", "prompt": "hi", "model": "a"}\n',
    "no_layout.csv": "foo,bar\n1,2\n",
    "mmlu_bad.csv": "prompt,gpt4,mixtral\nhi,True,maybe\n",
    "duplicate.jsonl": '{"prompt": "hi", "model": "a", "quality": 1}\n{"prompt": "hi", "model": "a", "quality": 1}\n',
    "empty_prompt.csv": "prompt_id,prompt,model,quality\np1,,a,1\n",
    "quality_range.json": json.dumps([{"prompt": "hi", "model": "a", "quality": 3}]),
}


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_internal_columns_never_in_messages(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(BAD_TABLES[name], encoding="utf-8")
    msg = _error(path)
    assert str(path) in msg
    for col in INTERNAL:
        assert col not in msg, msg
    for cmd in (
        ["eval", "--data", str(path), "--routers", "knn"],
        ["train", "--data", str(path), "--out", str(tmp_path / "r")],
    ):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2 and res.output.startswith("error:"), res.output
        assert not any(col in res.output for col in INTERNAL), res.output


def test_missing_column_lists_only_the_users_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_id": "p1", "prompt": "hi", "model": "a", "note": "x"}\n')
    msg = _error(path)
    assert "'quality'" in msg and "found 'prompt_id', 'prompt', 'model', 'note'." in msg


def test_a_users_column_named_like_a_helper_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("prompt,_row,gpt,mix\nhi,3,1,0\n")
    msg = _error(path)
    assert "'_row'" in msg and "rename" in msg


# ---- encodings ------------------------------------------------------------------------------
def test_windows_1252_csv_names_line_column_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"prompt_id,prompt,model,quality\np1,hi,a,1\np2,caf\xe9 au lait,b,0\n")
    msg = _error(path)
    assert msg.startswith(f"{path}: line 3, column 7: byte 0xe9 is not valid UTF-8")
    assert "Windows-1252" in msg and "re-save it as utf-8" in msg.lower()
    assert "iconv -f WINDOWS-1252 -t UTF-8 excel.csv" in msg
    res = runner.invoke(app, ["eval", "--data", str(path), "--routers", "knn"])
    assert res.exit_code == 2 and "line 3, column 7" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["train", "--data", str(path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "line 3, column 7" in res.output


def test_utf16_csv_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "unicode.csv"
    path.write_text("prompt_id,prompt,model,quality\np1,hi,a,1\n", encoding="utf-16")
    msg = _error(path)
    assert "line 1, column 1" in msg and "UTF-16" in msg and "iconv -f UTF-16" in msg


def test_jsonl_counts_physical_lines_and_json_too(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        b'{"prompt": "hi", "model": "a", "quality": 1}\n\n{"prompt": "na\xefve", "model": "b", "quality": 1}\n'
    )
    msg = _error(path)
    assert "line 3, column 15: byte 0xef" in msg and "Windows-1252" in msg
    assert "spreadsheet" not in msg  # the CSV-only hint
    js = tmp_path / "t.json"
    js.write_bytes(b'[\n {"prompt": "\xfcber", "model": "a", "quality": 1}\n]')
    assert "line 2, column 14" in _error(js)


def test_unrecognised_encoding_still_gives_the_place(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_bytes(b"prompt,model,quality\nx\x81y,a,1\n")  # 0x81 is undefined in Windows-1252
    msg = _error(path)
    assert "line 2, column 2" in msg and "not recognised" in msg


def test_utf8_with_byte_order_mark_loads(tmp_path: Path) -> None:
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt_id,prompt,model,quality\np1,hi,a,1\np1,hi,b,0\n")
    assert load_table(csv).models == ["a", "b"]
    jl = tmp_path / "bom.jsonl"
    jl.write_bytes(
        b'\xef\xbb\xbf{"prompt": "hi", "model": "a", "quality": 1}\n{"prompt": "hi", "model": "b", "quality": 0}\n'
    )
    assert load_table(jl).models == ["a", "b"]


def test_price_table_encoding(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_bytes(b"model,input_per_mtok,output_per_mtok\ncaf\xe9,1,2\n")
    with pytest.raises(TableError, match=r"line 2, column 4: byte 0xe9 is not valid UTF-8"):
        load_prices(path)
