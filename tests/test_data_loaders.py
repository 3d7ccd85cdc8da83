"""Loaders on small files written by the tests: long format, RouterBench wide, RouteLLM CSVs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmroute.data import (
    ModelPrice,
    RoutingTable,
    TableError,
    derive_prompt_id,
    detect_layout,
    load_table,
)


def _long_df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": ["a", "a", "b", "b", "c"],
            "prompt": ["add 2 and 2", "add 2 and 2", "write a poem", "write a poem", "NA"],
            "task": ["math", "math", "poetry", "poetry", "misc"],
            "model": ["small", "big", "small", "big", "big"],
            "quality": [1.0, 1.0, 0.25, np.nan, 0.5],
            "cost_usd": [0.001, 0.01, np.nan, 0.02, 0.03],
            "input_tokens": [10, 10, 20, 20, 5],
            "output_tokens": [5, 5, 50, 60, 1],
        }
    )


def _check_long(t: RoutingTable) -> None:
    assert t.prompt_ids == ["a", "b", "c"]
    assert t.models == ["big", "small"]
    assert t.prompts == ["add 2 and 2", "write a poem", "NA"]
    assert t.tasks == ["math", "poetry", "misc"]
    q = t.quality_matrix()
    assert q[0].tolist() == [1.0, 1.0]
    assert np.isnan(q[1, 0]) and q[1, 1] == 0.25  # missing stays missing, not zero
    assert np.isnan(q[2, 1])  # no row for (c, small)
    assert t.df["prompt_id"].map(type).eq(str).all()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".json"])
def test_long_formats(tmp_path: Path, suffix: str) -> None:
    df = _long_df()
    p = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        df.to_csv(p, index=False)
    elif suffix == ".jsonl":
        df.to_json(p, orient="records", lines=True)
    elif suffix == ".json":
        df.to_json(p, orient="records")
    else:
        df.to_parquet(p)
    t = load_table(p)
    _check_long(t)
    assert t.source == str(p)
    assert t.df["input_tokens"].dtype == "Int64"


def test_prices_fill_missing_cost(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    _long_df().to_csv(p, index=False)
    prices = {"small": ModelPrice(1.0, 2.0), "big": ModelPrice(10.0, 30.0)}
    t = load_table(p, prices=prices)
    c = t.cost_matrix()
    # (b, small) had no cost_usd: 20 in x $1 + 50 out x $2 per 1M tokens
    assert c[1, 1] == pytest.approx((20 * 1.0 + 50 * 2.0) / 1e6)
    assert c[0, 0] == pytest.approx(0.01)  # given cost_usd wins


def test_prices_from_file_and_folder_with_data_parquet(tmp_path: Path) -> None:
    d = tmp_path / "myset"
    d.mkdir()
    _long_df().to_parquet(d / "data.parquet")
    (d / "prices.json").write_text(
        json.dumps({"prices_usd_per_1M_tokens": {"small": {"input_per_mtok": 1, "output_per_mtok": 2}}})
    )
    t = load_table(d)
    _check_long(t)
    assert t.prices == {"small": ModelPrice(1.0, 2.0)}
    # an explicit price table wins over the folder's
    (tmp_path / "p.yaml").write_text("big: {input: 3, output: 4}\n")
    t2 = load_table(d, prices=tmp_path / "p.yaml")
    assert t2.prices == {"big": ModelPrice(3.0, 4.0)}


def test_price_table_naming_unknown_model(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    _long_df().to_csv(p, index=False)
    with pytest.raises(TableError) as e:
        load_table(p, prices={"smal": ModelPrice(1, 1), "big": ModelPrice(1, 1)})
    msg = str(e.value)
    assert "'smal'" in msg and "close matches: 'small'" in msg and str(p) in msg


def test_missing_prompt_id_is_derived_from_text(tmp_path: Path) -> None:
    df = _long_df().drop(columns=["prompt_id"])
    p = tmp_path / "t.jsonl"
    df.to_json(p, orient="records", lines=True)
    t = load_table(p)
    assert t.prompt_ids == [derive_prompt_id(x) for x in ["add 2 and 2", "write a poem", "NA"]]
    assert derive_prompt_id("add 2 and 2") == derive_prompt_id("add 2 and 2")
    assert derive_prompt_id("add 2 and 2").startswith("p-") and len(derive_prompt_id("x")) == 18


def test_numeric_prompt_ids_become_strings(tmp_path: Path) -> None:
    df = _long_df()
    df["prompt_id"] = [1, 1, 2, 2, 3]
    p = tmp_path / "t.parquet"
    df.to_parquet(p)
    assert load_table(p).prompt_ids == ["1", "2", "3"]
    q = tmp_path / "t.jsonl"
    df.to_json(q, orient="records", lines=True)
    assert load_table(q).prompt_ids == ["1", "2", "3"]


# ---- RouterBench wide layout ------------------------------------------------------------------
_RB_MODELS = ["gpt-4", "meta/llama-70b"]


def _rb_df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["arc.0", "arc.1", "arc.1", "mbpp.7"],
            "prompt": [
                "['Question: ', 'what is 1+1?']",
                "['Pick A or B']",
                "['Pick A or B', ' again']",
                "plain text",
            ],
            "eval_name": ["arc", "arc", "arc", "mbpp"],
            "gpt-4": [1.0, 0.0, 1.0, np.nan],
            "meta/llama-70b": [0.0, 0.0, 1.0, 1.0],
            "gpt-4|model_response": ["['2']", "['A']", "['B']", "['def f(): pass']"],
            "meta/llama-70b|model_response": ["['3']", "['B']", "['B']", "['def g(): pass']"],
            "gpt-4|total_cost": [0.003, 0.002, 0.002, 0.01],
            "meta/llama-70b|total_cost": [0.0003, 0.0002, 0.0002, 0.001],
            "oracle_model_to_route_to": ["gpt-4", "meta/llama-70b", "meta/llama-70b", "meta/llama-70b"],
        }
    )


def _check_rb(t: RoutingTable) -> None:
    assert t.models == sorted(_RB_MODELS)
    assert t.prompt_ids == ["arc.0", "arc.1", "arc.1#1", "mbpp.7"]  # repeated sample_id suffixed
    assert t.prompts[0] == "Question: what is 1+1?"  # str(list) of parts joined
    assert t.prompts[3] == "plain text"
    assert t.tasks == ["arc", "arc", "arc", "mbpp"]
    q, c = t.quality_matrix(), t.cost_matrix()
    j = t.models.index("gpt-4")
    assert q[0, j] == 1.0 and np.isnan(q[3, j])
    assert c[0, j] == pytest.approx(0.003)
    resp = t.df.set_index(["prompt_id", "model"])["response"]
    assert resp[("mbpp.7", "meta/llama-70b")] == "def g(): pass"
    assert "routerbench_oracle_model" in t.df.columns


def test_routerbench_csv_with_index_column(tmp_path: Path) -> None:
    p = tmp_path / "rb.csv"
    _rb_df().to_csv(p)  # with the unnamed index column, as RouterDC's files have
    assert detect_layout(pd.read_csv(p)) == "routerbench"
    t = load_table(p)
    _check_rb(t)
    assert "Unnamed: 0" not in t.df.columns


def test_routerbench_parquet_and_pickle(tmp_path: Path) -> None:
    df = _rb_df()
    df.to_parquet(tmp_path / "rb.parquet")
    _check_rb(load_table(tmp_path / "rb.parquet"))
    df["prompt"] = [["Question: ", "what is 1+1?"], ["Pick A or B"], ["Pick A or B", " again"], "plain text"]
    df.to_pickle(tmp_path / "rb.pkl")
    _check_rb(load_table(tmp_path / "rb.pkl"))


def test_pickle_needs_explicit_suffix(tmp_path: Path) -> None:
    _rb_df().to_pickle(tmp_path / "rb.bin")
    with pytest.raises(TableError, match=r"refusing to unpickle"):
        load_table(tmp_path / "rb.bin", fmt="pickle")
    # directory scans never unpickle
    d = tmp_path / "only_pickles"
    d.mkdir()
    _rb_df().to_pickle(d / "rb.pkl")
    with pytest.raises(TableError, match=r"pickles are only read when passed explicitly"):
        load_table(d)


def test_routerbench_bad_quality_names_source_column(tmp_path: Path) -> None:
    df = _rb_df()
    df.loc[2, "meta/llama-70b"] = 2.0
    p = tmp_path / "rb.csv"
    df.to_csv(p, index=False)
    with pytest.raises(TableError) as e:
        load_table(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: row 3, column 'quality' (source column 'meta/llama-70b')")
    assert "outside [0, 1]" in msg and "2.0" in msg


def test_routerbench_negative_cost(tmp_path: Path) -> None:
    df = _rb_df()
    df.loc[1, "gpt-4|total_cost"] = -0.5
    p = tmp_path / "rb.csv"
    df.to_csv(p, index=False)
    with pytest.raises(
        TableError, match=r"row 2, column 'cost_usd' \(source column 'gpt-4\|total_cost'\): negative"
    ):
        load_table(p)


def test_routerbench_model_without_quality_column(tmp_path: Path) -> None:
    df = _rb_df().drop(columns=["gpt-4"])
    p = tmp_path / "rb.csv"
    df.to_csv(p, index=False)
    with pytest.raises(TableError, match=r"model\(s\) 'gpt-4' have .* no quality column"):
        load_table(p)


# ---- RouteLLM per-prompt correctness CSVs ------------------------------------------------------
_RL_HEADER = "prompt,mixtral-8x7b-instruct-v0.1,gpt-4-1106-preview"


def _write_routellm(d: Path) -> None:
    d.mkdir()
    (d / "mmlu_anatomy.csv").write_text(
        _RL_HEADER + '\n"Which bone?\nA. femur\nB. ulna\nAnswer:",True,True\n"Which organ?",False,True\n'
    )
    (d / "mmlu_virology.csv").write_text(_RL_HEADER + "\nWhat is a virus?,False,False\n")
    (d / "gsm8k_responses.csv").write_text(
        _RL_HEADER + ",mixtral-8x7b-instruct-v0.1_response,gpt-4-1106-preview_response\n"
        'Janet has 3 eggs. How many?,False,True," 4\n#### 4",3\n'
    )
    (d / "prices.csv").write_text("model,input_per_mtok,output_per_mtok\ngpt-4-1106-preview,10,30\n")


def test_routellm_directory(tmp_path: Path) -> None:
    d = tmp_path / "responses"
    _write_routellm(d)
    t = load_table(d)
    assert t.models == ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    assert t.prompt_ids == ["gsm8k/0", "mmlu/anatomy/0", "mmlu/anatomy/1", "mmlu/virology/0"]
    assert t.tasks == ["gsm8k", "mmlu/anatomy", "mmlu/anatomy", "mmlu/virology"]
    assert t.prompts[1] == "Which bone?\nA. femur\nB. ulna\nAnswer:"
    q = t.quality_matrix()
    assert q.tolist() == [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    resp = t.df.set_index(["prompt_id", "model"])["response"]
    assert resp[("gsm8k/0", "mixtral-8x7b-instruct-v0.1")] == " 4\n#### 4"
    assert resp[("gsm8k/0", "gpt-4-1106-preview")] == "3"
    assert np.isnan(resp.get(("mmlu/anatomy/0", "gpt-4-1106-preview"), np.nan))


def test_routellm_single_file_and_fmt_override(tmp_path: Path) -> None:
    d = tmp_path / "responses"
    _write_routellm(d)
    t = load_table(d / "mmlu_anatomy.csv")
    assert t.prompt_ids == ["mmlu/anatomy/0", "mmlu/anatomy/1"]
    assert t.tasks == ["mmlu/anatomy", "mmlu/anatomy"]
    # a .txt file: the file format comes from fmt, the layout is still detected
    (tmp_path / "x.txt").write_text((d / "mmlu_virology.csv").read_text())
    with pytest.raises(TableError, match=r"cannot tell the file format"):
        load_table(tmp_path / "x.txt")
    assert load_table(tmp_path / "x.txt", fmt="csv").n_prompts == 1
    assert load_table(tmp_path / "x.txt", fmt="csv:routellm").n_prompts == 1
    with pytest.raises(TableError, match=r"unknown fmt"):
        load_table(tmp_path / "x.txt", fmt="excel")


def test_routellm_bad_cell_names_file_row_and_model_column(tmp_path: Path) -> None:
    d = tmp_path / "responses"
    _write_routellm(d)
    (d / "mmlu_virology.csv").write_text(_RL_HEADER + "\nq1,False,False\nq2,maybe,True\n")
    with pytest.raises(TableError) as e:
        load_table(d)
    msg = str(e.value)
    assert msg.startswith(f"{d / 'mmlu_virology.csv'}: row 2, column 'quality'")
    assert (
        "(source column 'mixtral-8x7b-instruct-v0.1')" in msg and "not a number" in msg and "'maybe'" in msg
    )


def test_fmt_forces_layout(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    _long_df().to_csv(p, index=False)
    # forcing RouteLLM on a long table: every non-meta column is taken as a model and fails validation
    with pytest.raises(TableError, match=r"column 'quality'"):
        load_table(p, fmt="routellm")


def test_unknown_layout_and_missing_path(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(TableError, match=r"cannot tell the layout"):
        load_table(p)
    with pytest.raises(TableError, match=r"no such file or directory"):
        load_table(tmp_path / "nope.csv")


def test_from_frame_and_subset_keep_prices() -> None:
    t = RoutingTable.from_frame(_long_df(), source="mem", prices={"big": ModelPrice(1, 1)})
    s = t.subset(["b"])
    assert s.prompt_ids == ["b"] and s.prices == {"big": ModelPrice(1, 1)}


def test_routerbench_str_list_with_escapes(tmp_path: Path) -> None:
    df = _rb_df()
    df.loc[0, "prompt"] = str(['It\'s a test:\nA) "x"\n', "B) y"])  # what RouterBench writes
    df.loc[1, "prompt"] = "[not a python list"  # left as it is
    p = tmp_path / "rb.csv"
    df.to_csv(p)
    t = load_table(p)
    assert t.prompts[0] == 'It\'s a test:\nA) "x"\nB) y'
    assert t.prompts[1] == "[not a python list"
