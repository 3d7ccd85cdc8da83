"""What a gateway request costs: budget holds before the call and the bill after it.

`Pricing` holds each model's prices (USD per token) and token counter
(`llmroute.gateway.tokens.TokenCounter`). Before a call the pipeline reserves `max_cost`, an
upper bound over the candidates the request may run on; after it, the client is charged `cost`
(the upstream's reported usage) or, when no usage arrived (e.g. a stream the client broke off),
`estimated_cost` (a central token estimate of the input and of the text delivered, never more
than the hold).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmroute.gateway.auth import max_request_cost
from llmroute.gateway.tokens import TokenCounter, estimate_input_tokens

if TYPE_CHECKING:
    from llmroute.gateway.config import GatewayConfig
    from llmroute.gateway.routing import RouteDecision, RoutingEngine

__all__ = ["Pricing"]


class Pricing:
    """Prices and token counters of a gateway's models, and the hold and bill of a request."""

    def __init__(self, config: GatewayConfig, engine: RoutingEngine) -> None:
        self.engine = engine  # its `models`: context windows and prices by name
        self.max_fallbacks = config.server.max_fallbacks
        #: model -> (USD per input token, USD per output token)
        self.prices = {m.name: (m.input_per_mtok / 1e6, m.output_per_mtok / 1e6) for m in config.models}
        #: model -> the counter that budget holds and estimated bills use (llmroute.gateway.tokens)
        self.counters = {m.name: TokenCounter.for_model(m.api, m.upstream) for m in config.models}

    def max_output(self, model: str, body: dict[str, Any]) -> tuple[int, int]:
        """(max output tokens per choice, number of choices `n`) of `body` on `model`."""
        mt = body.get("max_tokens") or body.get("max_completion_tokens")
        n = body.get("n")
        choices = int(n) if isinstance(n, int | float) and not isinstance(n, bool) and n > 1 else 1
        return int(mt or self.engine.models[model].context_window or 4096), choices

    def step_max_cost(self, model: str, body: dict[str, Any]) -> float:
        """The most one call of `model` can cost for `body` (input upper bound + `n` x max output)."""
        cfg = self.engine.models[model]
        tin = estimate_input_tokens(body, self.counters[model])
        out, n = self.max_output(model, body)
        return max_request_cost(cfg.input_per_mtok, cfg.output_per_mtok, tin, out, n)

    def max_cost(self, decision: RouteDecision, body: dict[str, Any]) -> float:
        """The budget hold: the dearest of the candidates the request may run on, each with an upper
        bound on its input tokens (its tokenizer's count, or UTF-8 bytes; tools and
        response_format included) and `n` x its maximum output."""
        tin: dict[bool, int] = {}  # by counter kind: tokenizer or byte bound
        worst = 0.0
        for name in decision.ranked[: 1 + self.max_fallbacks]:
            cfg = self.engine.models[name]
            c = self.counters[name]
            if c.tokenizer not in tin:
                tin[c.tokenizer] = estimate_input_tokens(body, c)
            out, n = self.max_output(name, body)
            cost = max_request_cost(cfg.input_per_mtok, cfg.output_per_mtok, tin[c.tokenizer], out, n)
            worst = max(worst, cost)
        return worst

    def estimated_cost(
        self, model: str, body: dict[str, Any], text: str, input_tokens: int | None = None
    ) -> tuple[int, int, float]:
        """(input, output tokens, USD) when the upstream reported no usage (e.g. a stream the client
        broke off): `input_tokens` (an Anthropic upstream reports them first) or a central estimate
        of the input, plus the estimated tokens of `text`, the output delivered (both
        `TokenCounter.central()`: a charge, not a hold, so not the byte bound that overcharges
        non-Latin text); never more than the request's hold on `model`."""
        c = TokenCounter.central()  # never above a hold's counter: min(bytes, the plain cl100k count)
        ti = input_tokens if input_tokens else estimate_input_tokens(body, c)
        out, n = self.max_output(model, body)
        to = min(c.count(text), out * n)
        pin, pout = self.prices[model]
        return ti, to, ti * pin + to * pout

    def cost(self, model: str, usage: dict[str, Any] | None) -> tuple[int, int, float]:
        """(input, output tokens, USD) of the upstream's reported `usage` on `model`."""
        if not usage:
            return 0, 0, 0.0
        ti = int(usage.get("prompt_tokens") or 0)
        to = int(usage.get("completion_tokens") or 0)
        pin, pout = self.prices[model]
        return ti, to, ti * pin + to * pout
