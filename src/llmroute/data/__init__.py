"""Routing tables: schema, loaders, validation, price tables, synthetic tables, splits.

Public API::

    from llmroute.data import load_table, load_prices, validate, make_synthetic_table, split_table
    table = load_table("../shared/data/routellm")          # folder with data.parquet + prices.json
    table = load_table("mmlu_responses/")                   # a folder of RouteLLM CSVs
    table = load_table("routerbench.csv", prices="prices.yaml", fmt="routerbench")
    train, test = split_table(table, test_size=0.2, seed=0)
"""

from llmroute.data.loaders import FILE_FORMATS, LAYOUTS, detect_layout, load_table, read_frame, to_long
from llmroute.data.prices import load_prices, parse_prices, prices_to_dict
from llmroute.data.splits import split_table
from llmroute.data.synthetic import (
    EXPECTED_QUALITY,
    SYNTHETIC_MODELS,
    SYNTHETIC_PRICES,
    SYNTHETIC_TOPICS,
    TOPIC_BEST,
    make_synthetic_table,
    true_best,
)
from llmroute.data.table import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    ModelPrice,
    RoutingTable,
    TableError,
)
from llmroute.data.validate import derive_prompt_id, validate

__all__ = [
    "EXPECTED_QUALITY",
    "FILE_FORMATS",
    "LAYOUTS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SYNTHETIC_MODELS",
    "SYNTHETIC_PRICES",
    "SYNTHETIC_TOPICS",
    "TOPIC_BEST",
    "ModelPrice",
    "RoutingTable",
    "TableError",
    "derive_prompt_id",
    "detect_layout",
    "load_prices",
    "load_table",
    "make_synthetic_table",
    "parse_prices",
    "prices_to_dict",
    "read_frame",
    "split_table",
    "to_long",
    "true_best",
    "validate",
]
