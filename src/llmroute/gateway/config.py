"""Gateway configuration: one YAML file, validated with pydantic when the gateway starts.

`load_config(path)` reads the YAML, substitutes `${ENV}` and `${ENV:-default}` in every string
(an unset variable without a default is an error that names it), validates it and returns a
`GatewayConfig`. Any problem raises `ConfigError` whose message names the field (dotted path)
and says what is allowed.

Shape (see examples/llmroute.yaml and examples/loopback.yaml)::

    server:   {max_body_bytes, max_json_depth, request_timeout_s, retries, backoff_s, breaker_failures,
               breaker_cooldown_s, max_header_bytes, max_header_count, header_timeout_s,
               body_timeout_s, keep_alive_s, max_connections, ca_bundle, proxy}
    models:   [{name, provider: openai|anthropic|bedrock|vertex|replay|<preset> (llmroute.gateway.providers: azure,
                gemini, mistral, groq, together, deepseek, openrouter, vllm, ollama, llamacpp),
                base_url, api_key_env, api_version, deployment, region, project (vertex), upstream_model,
                deployments: [{name, base_url, api_key_env, upstream_model, deployment, api_version,
                region, headers, weight, max_concurrency}], balance: weighted|least_busy|latency,
                input_per_mtok, output_per_mtok, context_window, timeout_s, max_concurrency,
                router_model, replay_table, replay_model, headers, ca_bundle, proxy}]
    routers:  {name: "path/to/router" | "builtin:default"}
    aliases:  {"llmroute/auto": {router, tradeoff, max_cost, min_quality, on_unmet, candidates,
                cascade: {models, max_steps, max_cost_usd, threshold, verifier, stall_s,
                          learned_verifier, stream_buffer_chars, next},
                sticky: {enabled, margin, ttl_s, max_sessions},
                implicit: {reask, regenerate, length, refusal, tool_error, score, reask_similarity,
                           reask_min_words},
                learning: {enabled, learner, max_explore, confidence, explore_loss, prior_var, dim, seed, state,
                           sync_interval_s, snapshot_every}}}
    keys:     [{id, key_sha256 | key_env, budget_usd_day, budget_usd_month, rpm, aliases}]
    admin:    {key_sha256 | key_env, demo, key_poll_s}   (master key of /admin/v1 and /ui;
               llmroute.gateway.admin)
    store:    {url: "sqlite:///llmroute-traces.sqlite" | "postgresql://..." | "memory://",
               batch_size, flush_interval_s, journal, commit_interval_s, ledger, retention_days,
               max_rows, prune_interval_s}
    trace:    {store_prompts: false, store_responses: false}
    telemetry: {otlp_endpoint, protocol: http/protobuf | grpc, service_name, headers_env, sample_ratio,
               metrics, capture_content, export_interval_s, export_timeout_s}  (OTLP; off by default)
    state:    "redis://host:6379/0" (off by default: budgets, rate limits, breakers and the response
               cache shared by replicas on several hosts; llmroute.gateway.state)
    on_state_error: fail_open | fail_closed   (budgets while that Redis is unreachable)

The key/budget fields are read by `llmroute.gateway.auth`; `store.url` by
`llmroute.gateway.store`. Secrets never appear in error messages: only env-var names do.

Each section's class (`ServerConfig`, `ModelConfig`, `AliasConfig`, ...) is in
`llmroute.gateway.config_sections`; this module holds `GatewayConfig` (the whole file and its
cross-section checks), the loading and `${ENV}` substitution, and re-exports the sections.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from llmroute.gateway.config_sections import (
    AdminConfig,
    AliasConfig,
    CascadeConfig,
    ImplicitConfig,
    KeyConfig,
    LearningConfig,
    ModelConfig,
    ServerConfig,
    StickyConfig,
    StoreConfig,
    TelemetryConfig,
    TraceConfig,
    _check_ca_bundle,
    _Strict,
)
from llmroute.gateway.config_sections import DeploymentConfig as DeploymentConfig
from llmroute.gateway.config_sections import _check_proxy as _check_proxy

__all__ = [
    "AdminConfig",
    "AliasConfig",
    "CascadeConfig",
    "ConfigError",
    "GatewayConfig",
    "ImplicitConfig",
    "KeyConfig",
    "LearningConfig",
    "ModelConfig",
    "ServerConfig",
    "StickyConfig",
    "StoreConfig",
    "TelemetryConfig",
    "TraceConfig",
    "load_config",
    "parse_config",
    "substitute_env",
]


class ConfigError(ValueError):
    """The gateway configuration is invalid; the message names the field and what is allowed."""


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: Any, env: dict[str, str] | None = None, _path: str = "") -> Any:
    """Replace `${NAME}` / `${NAME:-default}` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{_path or '<root>'}: environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}} to give a default)"
            )

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, env, f"{_path}.{k}" if _path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{_path}[{i}]") for i, v in enumerate(value)]
    return value


class GatewayConfig(_Strict):
    """The whole gateway configuration."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(min_length=1)
    routers: dict[str, str] = Field(default_factory=lambda: {"default": "builtin:default"})
    aliases: dict[str, AliasConfig] = Field(default_factory=dict)
    keys: list[KeyConfig] = Field(default_factory=list)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    trace: TraceConfig = Field(default_factory=TraceConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    # issue 4, validated by llmroute.signals (RuleEngine) and llmroute.cache (SemanticCache.from_config)
    signals: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named request signals")
    rules: list[dict[str, Any]] = Field(default_factory=list, description="routing / guard rules")
    cache: dict[str, Any] | None = Field(None, description="response cache (exact + semantic)")
    state: str | None = Field(
        None,
        description="redis://host:port/db shared by several gateway processes (budgets, rate limits, "
        "breakers, response cache); off by default",
    )
    on_state_error: Literal["fail_open", "fail_closed"] = Field(
        "fail_open", description="budgets while the shared state is unreachable: admit, or refuse with 503"
    )
    base_dir: str = Field(".", description="directory relative paths resolve against (set by load_config)")

    @field_validator("routers")
    @classmethod
    def _routers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            if not isinstance(ref, str) or not ref:
                raise ValueError(f"router {name!r}: give a router file path or 'builtin:default'")
            if ref.startswith("builtin:") and ref != "builtin:default":
                raise ValueError(f"router {name!r}: unknown built-in {ref!r}; allowed: 'builtin:default'")
        return v

    @model_validator(mode="after")
    def _cross(self) -> GatewayConfig:
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models: duplicate model name(s) {dup}")
        known = set(names)
        for alias, a in self.aliases.items():
            if alias in known:
                raise ValueError(f"aliases.{alias}: an alias cannot have the same name as a model")
            if a.router not in self.routers:
                raise ValueError(
                    f"aliases.{alias}.router: unknown router {a.router!r}; defined: {sorted(self.routers)}"
                )
            bad = [c for c in a.candidates if c not in known]
            if bad:
                raise ValueError(f"aliases.{alias}.candidates: unknown model(s) {bad}; defined: {names}")
            if a.cascade is not None and a.cascade.models is not None:
                bad = [c for c in a.cascade.models if c not in known]
                if bad or not a.cascade.models:
                    raise ValueError(
                        f"aliases.{alias}.cascade.models: unknown model(s) {bad} or empty; defined: {names}"
                    )
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("keys: duplicate key id")
        if self.state is not None:
            if not self.state.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("state: give a Redis URL (redis://host:6379/0, rediss://..., unix://...)")
            if self.cache is not None and "backend" not in self.cache:  # the cache on the same Redis
                self.cache = {**self.cache, "backend": "redis", "url": self.state}
        return self

    @model_validator(mode="after")
    def _ca_bundles(self) -> GatewayConfig:
        """CA bundle paths resolved against the config's folder (stored absolute) and checked."""
        if self.server.ca_bundle:
            path = self.resolve_path(self.server.ca_bundle)
            _check_ca_bundle(path, "server.ca_bundle")
            self.server.ca_bundle = str(path)
        for i, m in enumerate(self.models):
            if m.ca_bundle:
                path = self.resolve_path(m.ca_bundle)
                _check_ca_bundle(path, f"models[{i}].ca_bundle")
                m.ca_bundle = str(path)
        return self

    def model(self, name: str) -> ModelConfig | None:
        """The model named `name`, or None."""
        for m in self.models:
            if m.name == name:
                return m
        return None

    def resolve_path(self, p: str) -> Path:
        """A relative path resolved against the config file's folder, else the working directory."""
        path = Path(p).expanduser()
        if path.is_absolute():
            return path
        beside = Path(self.base_dir) / path
        if beside.exists() or not (Path.cwd() / path).exists():
            return beside
        return Path.cwd() / path


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid gateway configuration"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see examples/llmroute.yaml for allowed fields)"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: Any, *, source: str = "<config>", env: dict[str, str] | None = None, base_dir: str = "."
) -> GatewayConfig:
    """Validate an already-parsed YAML tree (after `${ENV}` substitution)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least 'models'")
    data = substitute_env(data, env)
    data.setdefault("base_dir", base_dir)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> GatewayConfig:
    """Read, substitute and validate a gateway YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(data, source=str(p), env=env, base_dir=str(p.resolve().parent))
