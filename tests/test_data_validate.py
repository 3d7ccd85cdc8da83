"""Malformed routing tables and price tables: errors name the file, the 1-based row and the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmroute.data import ModelPrice, TableError, load_prices, load_table, validate

HEADER = "prompt_id,prompt,model,quality,cost_usd,input_tokens,output_tokens\n"
GOOD = ["p1,hello,m1,1,0.1,10,5", "p1,hello,m2,0,0.2,10,5", "p2,bye,m1,0.5,0.1,3,4"]


def _csv(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    p = tmp_path / "bad.csv"
    p.write_text(header + "\n".join(rows) + "\n")
    return p


def _err(path: Path, **kw: object) -> str:
    with pytest.raises(TableError) as e:
        load_table(path, **kw)  # type: ignore[arg-type]
    return str(e.value)


def test_good_file_loads(tmp_path: Path) -> None:
    t = load_table(_csv(tmp_path, GOOD))
    assert t.n_prompts == 2 and t.models == ["m1", "m2"]


def test_missing_required_column(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["p1,hello,m1,0.1"], header="prompt_id,prompt,model,cost_usd\n")
    msg = _err(p)
    assert msg.startswith(f"{p}: missing required column(s) 'quality'")
    assert "found 'prompt_id', 'prompt', 'model', 'cost_usd'" in msg


def test_quality_out_of_range(tmp_path: Path) -> None:
    p = _csv(tmp_path, [*GOOD, "p3,x,m1,1.5,0.1,1,1"])
    assert _err(p) == f"{p}: row 4, column 'quality': quality outside [0, 1] (value 1.5)"


def test_quality_negative_several_rows(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["p1,a,m1,-0.1,,,", "p2,b,m1,0.3,,,", "p3,c,m1,-2,,,"])
    assert _err(p) == f"{p}: rows 1, 3, column 'quality': quality outside [0, 1] (values -0.1, -2.0)"


def test_quality_not_numeric(tmp_path: Path) -> None:
    p = _csv(tmp_path, [*GOOD[:2], "p2,bye,m1,good,0.1,3,4"])
    assert _err(p) == f"{p}: row 3, column 'quality': not a number (value 'good')"


def test_quality_booleans_and_missing_words(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["p1,a,m1,True,,,", "p1,a,m2,false,,,", "p2,b,m1,nan,,,", "p2,b,m2,,,,"])
    q = load_table(p).quality_matrix()
    assert q[0].tolist() == [1.0, 0.0]
    assert np.isnan(q[1]).all()  # missing stays missing (never 0)


def test_duplicate_prompt_model(tmp_path: Path) -> None:
    p = _csv(tmp_path, [*GOOD, "p1,hello,m2,1,0.2,10,5"])
    msg = _err(p)
    assert msg.startswith(
        f"{p}: rows 2, 4, columns 'prompt_id', 'model': duplicate (prompt_id, model) pair ('p1', 'm2')"
    )


def test_empty_prompt_text(tmp_path: Path) -> None:
    p = _csv(tmp_path, [*GOOD, 'p3,"   ",m1,1,0.1,1,1', "p4,,m1,1,0.1,1,1"])
    assert _err(p) == f"{p}: rows 4, 5, column 'prompt': empty prompt text"


def test_empty_prompt_id_and_model(tmp_path: Path) -> None:
    p = _csv(tmp_path, [*GOOD, ",x,m1,1,0.1,1,1"])
    assert _err(p) == f"{p}: row 4, column 'prompt_id': empty prompt_id"
    p = _csv(tmp_path, [*GOOD, "p3,x,,1,0.1,1,1"])
    assert _err(p) == f"{p}: row 4, column 'model': empty model name"


def test_negative_cost_and_tokens(tmp_path: Path) -> None:
    p = _csv(tmp_path, [*GOOD[:2], "p2,bye,m1,0.5,-0.1,3,4"])
    assert _err(p) == f"{p}: row 3, column 'cost_usd': negative (value -0.1)"
    p = _csv(tmp_path, ["p2,bye,m1,0.5,0.1,3,-4", *GOOD[:2]])
    assert _err(p) == f"{p}: row 1, column 'output_tokens': negative (value -4)"
    p = _csv(tmp_path, [*GOOD[:2], "p2,bye,m1,0.5,0.1,3.5,4"])
    assert _err(p) == f"{p}: row 3, column 'input_tokens': not a whole number of tokens (value 3.5)"
    p = _csv(tmp_path, [*GOOD[:2], "p2,bye,m1,0.5,cheap,3,4"])
    assert _err(p) == f"{p}: row 3, column 'cost_usd': not a number (value 'cheap')"


def test_inconsistent_prompt_text(tmp_path: Path) -> None:
    p = _csv(tmp_path, ["p1,hello,m1,1,,,", "p1,HELLO,m2,1,,,"])
    assert _err(p) == (
        f"{p}: rows 1, 2, column 'prompt': prompt_id 'p1' has different prompt texts; "
        "a prompt_id must name one prompt"
    )


def test_jsonl_rows_are_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"prompt": "a", "model": "m", "quality": 1}\n\n{"prompt": "b", "model": "m", "quality": 7}\n'
    )
    assert _err(p) == f"{p}: row 3, column 'quality': quality outside [0, 1] (value 7)"
    p.write_text('{"prompt": "a", "model": "m", "quality": 1}\n{"prompt": "b", \n')
    assert _err(p).startswith(f"{p}: row 2: invalid JSON")


def test_many_bad_rows_are_counted(tmp_path: Path) -> None:
    rows = [f"p{i},t{i},m,{2 + i},,," for i in range(8)]
    p = _csv(tmp_path, rows)
    assert _err(p).startswith(f"{p}: rows 1, 2, 3, 4, 5 (and 3 more), column 'quality'")


def test_errors_in_a_directory_name_the_file(tmp_path: Path) -> None:
    d = tmp_path / "many"
    d.mkdir()
    (d / "a.csv").write_text(HEADER + "\n".join(GOOD) + "\n")
    (d / "b.csv").write_text(HEADER + "q1,x,m1,0.5,,,\nq2,y,m1,3,,,\n")
    assert _err(d) == f"{d / 'b.csv'}: row 2, column 'quality': quality outside [0, 1] (value 3.0)"
    # duplicates across files list both places
    (d / "b.csv").write_text(HEADER + "p1,hello,m1,0.5,,,\n")
    msg = _err(d)
    assert msg.startswith(f"{d / 'a.csv'}: rows 1, {d / 'b.csv'}:1, columns 'prompt_id', 'model'")


def test_empty_file_and_no_rows(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("")
    assert "empty" in _err(p)
    p.write_text(HEADER)
    assert "no rows" in _err(p)


def test_validate_in_memory_and_no_zero_fill() -> None:
    df = pd.DataFrame({"prompt": ["a", "a"], "model": ["x", "y"], "quality": [None, 0.0]})
    out = validate(df, "mem")
    assert np.isnan(out["quality"].iloc[0]) and out["quality"].iloc[1] == 0.0
    assert out["prompt_id"].nunique() == 1
    with pytest.raises(TableError, match=r"^mem: the table has no rows"):
        validate(df.iloc[:0], "mem")


# ---- price tables ------------------------------------------------------------------------------
def test_prices_json_both_layouts(tmp_path: Path) -> None:
    p = tmp_path / "prices.json"
    p.write_text(
        '{"prices_usd_per_1M_tokens": {"a": {"input_per_mtok": 1.5, "output_per_mtok": 2, "source": "x"}},'
        ' "note": "n"}'
    )
    assert load_prices(p) == {"a": ModelPrice(1.5, 2.0)}
    p.write_text('{"a": {"input": 1, "output": 2}, "b": {"input_per_mtok": 0, "output_per_mtok": 0}}')
    assert load_prices(p) == {"a": ModelPrice(1.0, 2.0), "b": ModelPrice(0.0, 0.0)}


def test_prices_yaml_and_csv(tmp_path: Path) -> None:
    y = tmp_path / "p.yml"
    y.write_text("prices_usd_per_1M_tokens:\n  a: {input_per_mtok: 1, output_per_mtok: 3}\n")
    assert load_prices(y) == {"a": ModelPrice(1.0, 3.0)}
    c = tmp_path / "p.csv"
    c.write_text("model,input_per_mtok,output_per_mtok\na,1,3\nb/c,0.2,0.4\n")
    assert load_prices(c) == {"a": ModelPrice(1.0, 3.0), "b/c": ModelPrice(0.2, 0.4)}


def test_prices_errors(tmp_path: Path) -> None:
    c = tmp_path / "p.csv"
    c.write_text("model,input_per_mtok,output_per_mtok\na,1,3\nb,-1,2\n")
    with pytest.raises(
        TableError, match=r"p\.csv: row 2, model 'b', field 'input_per_mtok': negative price -1\.0"
    ):
        load_prices(c)
    c.write_text("model,input_per_mtok,output_per_mtok\na,1,\n")
    with pytest.raises(TableError, match=r"row 1, model 'a', field 'output_per_mtok': missing price"):
        load_prices(c)
    c.write_text("model,input_per_mtok\na,1\n")
    with pytest.raises(TableError, match=r"missing column\(s\) 'output_per_mtok'"):
        load_prices(c)
    j = tmp_path / "p.json"
    j.write_text('{"a": {"input": 1}}')
    with pytest.raises(TableError, match=r"model 'a': missing price field 'output_per_mtok'"):
        load_prices(j)
    j.write_text('{"a": {"input": "free", "output": 1}}')
    with pytest.raises(TableError, match=r"field 'input': price must be a number, got 'free'"):
        load_prices(j)
    j.write_text("{not json")
    with pytest.raises(TableError, match=r"invalid JSON"):
        load_prices(j)
    (tmp_path / "p.txt").write_text("a 1 2")
    with pytest.raises(TableError, match=r"unknown price table format"):
        load_prices(tmp_path / "p.txt")
    with pytest.raises(TableError, match=r"not found"):
        load_prices(tmp_path / "none.json")
