"""Upstream backends: OpenAI-compatible HTTP, Anthropic Messages, AWS Bedrock (Converse), and replay
of recorded responses."""

from __future__ import annotations

from pathlib import Path

from llmroute.gateway.backends.base import Backend, BackendError, classify_status
from llmroute.gateway.config import GatewayConfig, ModelConfig

__all__ = ["Backend", "BackendError", "classify_status", "make_backend", "make_backends"]


def make_backend(
    cfg: ModelConfig, replay_cache: dict[str, object] | None = None, base: GatewayConfig | None = None
) -> Backend:
    """The backend object for one configured model (not started yet); a model with `deployments`
    gets a `BalancedBackend` over one backend per deployment."""
    if cfg.deployments:
        from llmroute.gateway.backends.balanced import BalancedBackend, Deployment
        from llmroute.gateway.reliability import CircuitBreaker

        srv = base.server if base is not None else None
        members = [
            Deployment(
                make_backend(d, replay_cache, base),
                weight=entry.weight,
                limit=d.max_concurrency,
                breaker=CircuitBreaker(
                    srv.breaker_failures if srv else 5, srv.breaker_cooldown_s if srv else 10.0
                ),
            )
            for d, entry in zip(cfg.deployment_configs(), cfg.deployments, strict=True)
        ]
        return BalancedBackend(cfg, members)  # type: ignore[return-value]
    if cfg.api == "openai":  # OpenAI and every OpenAI-compatible preset
        from llmroute.gateway.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.provider == "bedrock":  # optional: needs botocore
        from llmroute.gateway.backends.bedrock import BedrockBackend

        return BedrockBackend(cfg)
    if cfg.provider == "anthropic":
        from llmroute.gateway.backends.anthropic import AnthropicBackend

        return AnthropicBackend(cfg)
    from llmroute.gateway.backends.replay import ReplayBackend, load_replay_index

    assert cfg.replay_table is not None
    path = base.resolve_path(cfg.replay_table) if base is not None else Path(cfg.replay_table)
    cache = replay_cache if replay_cache is not None else {}
    key = str(path)
    if key not in cache:
        cache[key] = load_replay_index(path)
    return ReplayBackend(cfg, cache[key])  # type: ignore[arg-type]


def make_backends(config: GatewayConfig) -> dict[str, Backend]:
    """name -> backend for every configured model."""
    cache: dict[str, object] = {}
    return {m.name: make_backend(m, cache, config) for m in config.models}
