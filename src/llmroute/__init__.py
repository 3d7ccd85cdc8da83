"""llmroute: route each LLM request to the model that gives the best answer for the money.

`from llmroute import Router` is resolved lazily so that importing the package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Decision", "Router", "__version__"]

if TYPE_CHECKING:
    from llmroute.router import Decision, Router


def __getattr__(name: str) -> Any:
    if name in ("Router", "Decision"):
        from llmroute import router

        return getattr(router, name)
    raise AttributeError(f"module 'llmroute' has no attribute {name!r}")
