"""Routing tables: schema, loaders, price tables, splits."""

from llmroute.data.table import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    ModelPrice,
    RoutingTable,
    TableError,
)

__all__ = ["OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "ModelPrice", "RoutingTable", "TableError"]
