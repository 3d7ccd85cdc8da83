"""The sections of the gateway configuration (`llmroute.gateway.config`): one pydantic class
per YAML block, with the checks that belong to that block alone.

`server:` (`ServerConfig`), `models:` (`ModelConfig`, its `deployments:` `DeploymentConfig`),
`aliases:` (`AliasConfig` with its `cascade:`, `sticky:`, `implicit:` and `learning:` blocks),
`keys:`, `admin:`, `store:`, `trace:` and `telemetry:`. `GatewayConfig` (the whole file, its
cross-section checks) and the loading (`load_config`, `${ENV}` substitution, error messages) are in
`llmroute.gateway.config`, which re-exports every class here: import them from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmroute.gateway.providers import AZURE_API_VERSION, PRESETS, azure_base_url

__all__ = [
    "AdminConfig",
    "AliasConfig",
    "CascadeConfig",
    "DeploymentConfig",
    "ImplicitConfig",
    "KeyConfig",
    "LearningConfig",
    "ModelConfig",
    "ServerConfig",
    "StickyConfig",
    "StoreConfig",
    "TelemetryConfig",
    "TraceConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def _check_proxy(v: str) -> str:
    """A proxy option: 'env', 'none' or an http:// proxy URL (the URL is never echoed: it may hold
    a password)."""
    if v in ("env", "none"):
        return v
    from llmroute.gateway.backends.proxies import parse_proxy_url

    parse_proxy_url(v, "proxy URL (or 'env' / 'none')")
    return v


def _check_ca_bundle(path: Path, where: str) -> None:
    """A CA bundle must exist and hold PEM certificates that load."""
    import ssl

    if not path.is_file():
        raise ValueError(
            f"{where}: CA bundle file {str(path)!r} not found (give a PEM file of CA certificates)"
        )
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ValueError(
            f"{where}: CA bundle {str(path)!r} holds no usable PEM certificate ({type(e).__name__})"
        ) from None


class ServerConfig(_Strict):
    """Request-path limits and reliability knobs."""

    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_json_depth: int = Field(
        64, ge=2, le=200, description="deepest array/object nesting of a JSON body (deeper: 400)"
    )
    request_timeout_s: float = Field(120.0, gt=0, description="whole-request deadline")
    retries: int = Field(1, ge=0, le=10, description="retries per candidate for retryable errors")
    backoff_s: float = Field(0.05, ge=0, description="first retry backoff; doubles each retry")
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open a breaker")
    breaker_cooldown_s: float = Field(10.0, gt=0, description="open time before a half-open probe")
    max_fallbacks: int = Field(3, ge=0, description="other candidates tried after the first")
    route_batch: int = Field(
        32, ge=1, le=256, description="router estimates batched per event-loop turn (1 = off)"
    )
    blas_threads: int | None = Field(1, ge=1, description="BLAS threads per worker (None: leave as is)")
    # slow and oversized clients (enforced per connection by `llmroute.gateway._uvicorn`)
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="request line + headers larger than this get a 431"
    )
    max_header_count: int = Field(100, ge=1, description="more header fields than this get a 431")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection whose request head is not complete by then is closed (408)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body that sends nothing for this long gets a 408"
    )
    keep_alive_s: float = Field(30.0, gt=0, description="idle keep-alive connections are closed after this")
    max_connections: int = Field(
        1024, ge=1, description="open connections per worker; more get a 503 and are closed"
    )
    # upstream connections (`llmroute.gateway.backends.http`); a model's own value overrides these
    ca_bundle: str | None = Field(
        None, description="PEM file of CA certificates trusted for https upstreams, besides the system's"
    )
    proxy: str = Field(
        "env",
        description="upstream proxy: 'env' (HTTPS_PROXY / HTTP_PROXY / NO_PROXY), 'none', or http://[user:pass@]host:port",
    )

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str) -> str:
        return _check_proxy(v)


class DeploymentConfig(_Strict):
    """One deployment of a model (`models[].deployments`): where it runs, with the model's other
    settings; the fields given here replace the model's."""

    name: str | None = Field(None, description="a label for logs and traces (default: <model>#<i>)")
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    deployment: str | None = Field(None, description="azure: the deployment name")
    api_version: str | None = None
    region: str | None = Field(None, description="bedrock: the AWS region")
    headers: dict[str, str] | None = None
    weight: float = Field(1.0, gt=0, description="share of requests (balance: weighted)")
    max_concurrency: int | None = Field(None, gt=0, description="in-flight requests on this deployment")

    #: the fields that are not the model's
    OWN: ClassVar[frozenset[str]] = frozenset({"name", "weight"})


class ModelConfig(_Strict):
    """One upstream model the gateway can call."""

    name: str = Field(min_length=1)
    provider: Literal[
        "openai",
        "anthropic",
        "replay",
        "azure",
        "gemini",
        "mistral",
        "groq",
        "together",
        "deepseek",
        "openrouter",
        "vllm",
        "ollama",
        "llamacpp",
        "bedrock",
        "vertex",
    ] = Field(
        "openai", description="openai, anthropic, replay, bedrock, vertex, or an OpenAI-compatible preset"
    )
    base_url: str | None = None
    region: str | None = Field(
        None, description="bedrock: the AWS region (us-east-1); vertex: the location (us-central1, global)"
    )
    project: str | None = Field(None, description="vertex: the Google Cloud project id")
    api_version: str | None = Field(None, description="azure: the api-version query (default 2024-10-21)")
    deployment: str | None = Field(
        None, description="azure: the deployment (default: upstream_model, else name)"
    )
    api_key_env: str | None = None
    upstream_model: str | None = Field(None, description="model id sent upstream (default: name)")
    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    context_window: int | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_concurrency: int = Field(256, gt=0)
    router_model: str | None = Field(None, description="router column that estimates this model")
    profile: str | None = Field(
        None,
        description="profile table (graded rows of this model, e.g. from `llmroute profile`): routers "
        "that lack its router column get it added from the profile at startup, without retraining",
    )
    replay_table: str | None = None
    replay_model: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    ca_bundle: str | None = Field(
        None, description="PEM CA file for this upstream (default: server.ca_bundle)"
    )
    proxy: str | None = Field(None, description="'env', 'none' or a proxy URL (default: server.proxy)")
    deployments: list[DeploymentConfig] | None = Field(
        None,
        min_length=1,
        description="several deployments behind this model's name (each with its own limit and breaker)",
    )
    balance: Literal["weighted", "least_busy", "latency"] = Field(
        "weighted",
        description="how a deployment is picked: weighted random, fewest in flight, lowest recent latency",
    )

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        return None if v is None else _check_proxy(v)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if (self.api_version or self.deployment) and self.provider != "azure":
            raise ValueError("api_version and deployment apply to provider 'azure' only")
        if (self.region is not None) != (self.provider in ("bedrock", "vertex")):
            raise ValueError(
                "providers 'bedrock' and 'vertex' need region (e.g. us-east-1, us-central1); other "
                "providers take none"
            )
        if (self.project is not None) != (self.provider == "vertex"):
            raise ValueError(
                "provider 'vertex' needs project (the Google Cloud project id); others take none"
            )
        if self.provider == "bedrock" and not self.base_url:
            self.base_url = f"https://bedrock-runtime.{self.region}.amazonaws.com"
        if self.provider == "vertex" and not self.base_url:
            host = (
                "aiplatform.googleapis.com"
                if self.region == "global"
                else f"{self.region}-aiplatform.googleapis.com"
            )
            self.base_url = (
                f"https://{host}/v1/projects/{self.project}/locations/{self.region}/endpoints/openapi"
            )
        preset = PRESETS.get(self.provider)
        if preset is not None:
            if not self.base_url:
                if preset.base_url is None:
                    raise ValueError(
                        f"provider {self.provider!r} needs base_url (the resource's endpoint, e.g. "
                        "https://<resource>.openai.azure.com)"
                    )
                self.base_url = preset.base_url
            if self.api_key_env is None:
                self.api_key_env = preset.api_key_env
        if self.provider in ("openai", "anthropic", "bedrock", "vertex", *PRESETS):
            if not self.base_url:
                self.base_url = (
                    "https://api.openai.com/v1" if self.provider == "openai" else "https://api.anthropic.com"
                )
            if not self.base_url.startswith(("http://", "https://")):
                # never echo the URL itself: it may carry user:password or a token
                scheme = self.base_url.split("://", 1)[0] if "://" in self.base_url else "no scheme"
                raise ValueError(f"base_url must start with http:// or https:// (got {scheme!r})")
        if self.provider == "replay" and not self.replay_table:
            raise ValueError("provider 'replay' needs replay_table (a routing table file or folder)")
        if self.deployments:
            if self.api != "openai":
                raise ValueError("deployments are supported on OpenAI-compatible providers only")
            self.deployment_configs()  # each one valid
        if self.provider == "azure":
            assert self.base_url is not None
            self.base_url = azure_base_url(
                self.base_url, self.deployment or self.upstream, self.api_version or AZURE_API_VERSION
            )
        return self

    def deployment_configs(self) -> list[ModelConfig]:
        """One model config per entry of `deployments` (this model's settings with the entry's
        fields; the name `<model>#<i>` or the entry's); [] without deployments. ValueError names
        the entry at fault."""
        out: list[ModelConfig] = []
        base = self.model_dump(exclude={"deployments", "balance"}, exclude_none=True)
        base["upstream_model"] = self.upstream  # not the entry's label
        raw_url = base.pop("base_url", None) if self.provider == "azure" else None  # rebuilt below
        for i, d in enumerate(self.deployments or ()):
            fields = d.model_dump(exclude=DeploymentConfig.OWN, exclude_none=True)
            if self.provider == "azure" and "base_url" not in fields:
                fields["base_url"] = (raw_url or "").split("/openai/deployments/")[0]
            try:
                out.append(
                    ModelConfig.model_validate({**base, **fields, "name": d.name or f"{self.name}#{i}"})
                )
            except ValidationError as e:
                why = "; ".join(str(x["msg"]) for x in e.errors())
                raise ValueError(f"deployments[{i}]: {why}") from None
        return out

    @property
    def api(self) -> str:
        """The upstream API: "openai" (OpenAI and every OpenAI-compatible preset), "anthropic",
        "bedrock" or "replay"."""
        return self.provider if self.provider in ("anthropic", "bedrock", "replay") else "openai"

    def auth_headers(self, key: str) -> dict[str, str]:
        """The headers that carry the API key `key` to this model's upstream (`Authorization:
        Bearer`; Azure: `api-key`)."""
        preset = PRESETS.get(self.provider)
        if preset is not None and preset.auth == "api-key":
            return {"api-key": key}
        return {"Authorization": f"Bearer {key}"}

    @property
    def stream_usage(self) -> bool:
        """Whether streams ask the upstream for usage (`stream_options.include_usage`)."""
        preset = PRESETS.get(self.provider)
        return preset is None or preset.stream_usage

    @property
    def upstream(self) -> str:
        """Model id sent to the upstream API."""
        return self.upstream_model or self.name

    @property
    def estimated_by(self) -> str:
        """Router column whose estimates stand for this model."""
        return self.router_model or self.name

    def api_key(self) -> str | None:
        """The API key from `api_key_env` (None when unset)."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None


class CascadeConfig(_Strict):
    """An alias's cascade: call a cheap model first, verify its answer, escalate while it fails
    (see `llmroute.gateway.cascade` and the README's Cascades section)."""

    models: list[str] | None = Field(
        None, description="models in the order tried; unset = the router's ranking (its pick first)"
    )
    max_steps: int = Field(2, ge=1, le=10, description="most answers bought for one request")
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        description="per-request ceiling: a later step is taken only if the cost so far plus that "
        "step's worst case (input + max_tokens of output at its prices) stays within it",
    )
    threshold: float = Field(0.5, ge=0, le=1, description="an answer scoring at least this is served")
    verifier: list[str] = Field(
        default_factory=lambda: ["empty", "refusal", "json", "code", "final_answer", "logprob"],
        description="checks of llmroute.cascade.verifiers; the answer's score is their minimum",
    )
    stall_s: float | None = Field(
        None,
        gt=0,
        description="a step with no answer (stream: no first token; then: no chunk) by then escalates",
    )
    learned_verifier: str | None = Field(
        None,
        description="JSON weights of a learned answer-quality verifier (llmroute.cascade.learned), "
        "scored with the checks; relative to the config's folder",
    )
    stream_buffer_chars: int = Field(
        4096,
        ge=0,
        description="streams: a step's answer is held back (and verified) up to this many characters; "
        "a longer one is streamed as it comes, without escalation",
    )
    next: Literal["reestimate", "ranked"] | None = Field(
        None,
        description="after a rejected answer: 'reestimate' re-estimates the models not tried with the "
        "answers' evidence and calls the one with the largest expected gain - tradeoff x cost (stops "
        "when none is > 0); 'ranked' the next of `models` or of the router's ranking. Unset: ranked "
        "when `models` is set, else reestimate",
    )

    @property
    def next_mode(self) -> str:
        """The effective `next`: as set, else ranked with `models` and reestimate without."""
        return self.next or ("ranked" if self.models else "reestimate")

    @field_validator("verifier", mode="before")
    @classmethod
    def _verifier(cls, v: Any) -> Any:
        from llmroute.cascade.verifiers import CHECKS

        names = [v] if isinstance(v, str) else v
        if isinstance(names, list):
            bad = [n for n in names if n not in CHECKS]
            if bad:
                raise ValueError(f"unknown verifier check(s) {bad}; allowed: {sorted(CHECKS)}")
        return names


class StickyConfig(_Strict):
    """An alias's sticky sessions (`llmroute.gateway.sticky`): a conversation stays on the model that
    answered its earlier turn unless switching is expected to gain more than `margin`."""

    enabled: bool = Field(True, description="keep a conversation on the model that answered it")
    margin: float = Field(
        0.02,
        ge=0,
        description="switch only when reward(router's pick) - reward(sticky model) at the request's "
        "trade-off exceeds this (reward = quality - tradeoff * cost)",
    )
    ttl_s: float = Field(1800.0, gt=0, description="a session unused this long is forgotten")
    max_sessions: int = Field(
        100_000, gt=0, description="sessions remembered per alias and worker (least recently used go first)"
    )


class ImplicitConfig(_Strict):
    """An alias's implicit outcomes (`llmroute.gateway.sticky`): signals in later traffic that grade an
    earlier answer low, each switchable. Re-ask and regenerate need the alias's sessions (its
    `sticky` block's ttl_s / max_sessions; sessions are tracked even with sticky.enabled false)."""

    reask: bool = Field(True, description="the same user asks a near-identical question again")
    regenerate: bool = Field(True, description="the same conversation is sent again")
    length: bool = Field(True, description="the answer was cut at the output limit (finish_reason=length)")
    refusal: bool = Field(True, description="the answer is a refusal (the cascade's refusal cues)")
    tool_error: bool = Field(True, description="the client reports a failed tool call in the next turn")
    score: float = Field(
        0.0, ge=0, le=1, description="the quality an implicit signal gives the graded answer"
    )
    reask_similarity: float = Field(
        0.8, gt=0, le=1, description="re-ask: Jaccard similarity of the normalised word sets at least this"
    )
    reask_min_words: int = Field(
        3, ge=1, description="re-ask: shorter messages ('continue', 'yes') never count"
    )


class LearningConfig(_Strict):
    """Online learning of an alias (`llmroute.gateway.learning`): a bandit learner corrects the
    alias's router from outcomes (`/v1/feedback`, implicit signals), exploring on at most
    `max_explore` of its routed requests. Off by default."""

    enabled: bool = False
    learner: Literal["thompson", "linucb", "greedy"] = Field(
        "thompson", description="how the learner explores (greedy: never)"
    )
    max_explore: float = Field(
        0.05, ge=0, le=1, description="largest share of the alias's routed requests that may explore"
    )
    confidence: float = Field(
        1.0, ge=0, description="the learner leaves the router's pick only when this many sd ahead"
    )
    explore_loss: float = Field(
        0.002,
        ge=0,
        description="conservative exploration: the largest expected reward per request given up by "
        "exploring models the learner rates below its choice (0: no such budget)",
    )
    explore_decay: float = Field(
        0.0,
        ge=0,
        description="n0 > 0: once the alias's learner has learned n > n0 outcomes, max_explore and "
        "explore_loss apply times sqrt(n0 / n), so exploration that finds nothing better stops "
        "costing (0: no decay)",
    )
    prior_var: float = Field(0.01, gt=0, description="prior variance of each residual weight")
    dim: int = Field(32, ge=1, le=512, description="prompt-embedding columns after random projection")
    seed: int = Field(0, description="learner seed (each worker adds its pid)")
    state: str | None = Field(
        None,
        description="SQLite file shared by the workers (outcome deltas and snapshots); default: "
        "the gateway's `state: redis://...` (replicas on several hosts), else beside a SQLite trace "
        "store (<db>.learner), in memory with memory://",
    )
    sync_interval_s: float = Field(
        1.0, gt=0, description="how often a worker applies the outcomes other workers recorded"
    )
    snapshot_every: int = Field(1000, ge=1, description="outcomes between periodic snapshots")


class AliasConfig(_Strict):
    """A routed model name exposed to clients, with its router and policy.

    tradeoff unset: the policy stored in the router file applies (its trade-off, and its
    calibrated strong/weak threshold when it has one; see `llmroute.gateway.routing`).
    on_unmet: what happens when no candidate meets max_cost / min_quality: "closest" serves the
    closest one (the cheapest / the best) and says so in headers, "reject" answers 422.
    """

    router: str = "default"
    candidates: list[str] = Field(default_factory=list, description="model names; empty = all routable")
    tradeoff: float | None = Field(
        None, ge=0, description="lambda in q - lambda * cost_usd; unset = the router file's policy"
    )
    max_cost: float | None = Field(None, gt=0)
    min_quality: float | None = Field(None, ge=0, le=1)
    on_unmet: Literal["closest", "reject"] = Field(
        "closest", description="no candidate meets max_cost/min_quality: serve the closest, or 422"
    )
    description: str = ""
    cascade: CascadeConfig | None = Field(
        None, description="cheap model first, escalate when a verifier rejects its answer"
    )
    sticky: StickyConfig | None = Field(
        None, description="keep a conversation on its model unless switching gains more than a margin"
    )
    implicit: ImplicitConfig | None = Field(
        None, description="grade earlier answers from later traffic (re-ask, regenerate, length, ...)"
    )
    learning: LearningConfig = Field(
        default_factory=LearningConfig, description="learn from outcomes online (off by default)"
    )

    @model_validator(mode="after")
    def _learning_alone(self) -> AliasConfig:
        if self.learning.enabled and self.cascade is not None:
            raise ValueError(
                "learning and cascade cannot both be on for one alias (a cascade picks its own "
                "models); turn one of them off"
            )
        return self


class KeyConfig(_Strict):
    """An API key allowed to call the gateway (stored hashed: sha256 hex of the key)."""

    id: str = Field(min_length=1)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    key_env: str | None = None
    budget_usd_day: float | None = Field(None, ge=0)
    budget_usd_month: float | None = Field(None, ge=0)
    rpm: int | None = Field(None, gt=0, description="requests per minute")
    aliases: list[str] | None = Field(None, description="allowed model names/aliases; None = all")

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if not self.key_sha256 and not self.key_env:
            raise ValueError("give key_sha256 (sha256 hex of the key) or key_env (env var holding the key)")
        return self


class AdminConfig(_Strict):
    """The master key of the admin API (`/admin/v1/...`) and the dashboard (`/ui`).

    Stored like the API keys: `key_sha256` (sha256 hex of the master key, `llmroute keys hash`) or
    `key_env` (an environment variable holding it). Without either, admin endpoints answer 403,
    unless `demo: true` and the gateway is served on a loopback address (127.0.0.1, ::1): then
    they need no key (a local demo). See `llmroute.gateway.admin`.
    """

    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    key_env: str | None = None
    demo: bool = Field(False, description="keyless admin access, only when served on loopback")
    key_poll_s: float | None = Field(
        5.0,
        gt=0,
        description="how often each worker checks the key store for changes made by another gateway "
        "sharing it (other hosts; the workers of one gateway see a change on their next request); "
        "null: never",
    )


class StoreConfig(_Strict):
    """Where decision traces and key spend go, and how long traces are kept."""

    url: str = "sqlite:///llmroute-traces.sqlite"
    batch_size: int = Field(256, gt=0)
    flush_interval_s: float = Field(
        0.01,
        gt=0,
        le=60,
        description="traces reach the journal (or the database) at least this often: a kill -9 "
        "loses at most this window",
    )
    journal: bool = Field(
        True, description="SQLite: group-commit traces to a journal beside the database between commits"
    )
    commit_interval_s: float = Field(
        0.5, gt=0, description="with a journal: traces are committed to the database this often"
    )
    ledger: str | None = Field(
        None,
        description="budget ledger file (spend that survives kill -9): default beside a SQLite store "
        "(<db>.ledger), 'llmroute-spend.ledger' in the config's folder with Postgres, none with "
        "memory://; 'off' keeps spend in memory (and the store)",
    )
    retention_days: float | None = Field(
        30.0, gt=0, description="traces older than this are deleted; null keeps all"
    )
    max_rows: int | None = Field(
        None, gt=0, description="at most this many traces are kept (the newest); null: no cap"
    )
    prune_interval_s: float = Field(
        600.0, gt=0, description="how often the trace writer enforces the retention"
    )


class TraceConfig(_Strict):
    """What a trace record keeps."""

    store_prompts: bool = False
    store_responses: bool = False


class TelemetryConfig(_Strict):
    """OpenTelemetry traces and metrics over OTLP (`llmroute.gateway.telemetry`; the `otel` extra).
    Off unless `otlp_endpoint` is set."""

    otlp_endpoint: str | None = Field(
        None,
        description="collector URL, e.g. http://127.0.0.1:4318 (http/protobuf: /v1/traces and "
        "/v1/metrics are appended) or http://127.0.0.1:4317 (grpc); null: telemetry off",
    )
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    service_name: str = Field("llmroute", min_length=1)
    headers_env: str | None = Field(
        None, description="environment variable holding the exporter's headers as 'k1=v1,k2=v2'"
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="share of new traces kept; a client's traceparent decides its own"
    )
    metrics: bool = Field(False, description="also export metrics over OTLP")
    capture_content: bool = Field(
        False, description="put prompts and answers on spans (gen_ai.input/output.messages); off: never"
    )
    export_interval_s: float = Field(5.0, gt=0, le=300, description="how often spans and metrics are sent")
    export_timeout_s: float = Field(10.0, gt=0, le=120, description="timeout of one export call")

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("telemetry.otlp_endpoint: give an http:// or https:// URL")
        return v
