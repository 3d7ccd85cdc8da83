"""Provider presets: OpenAI-compatible hosts named by `provider:` on a model, so a config need not
spell out each host's base URL, key variable and auth header.

    provider     base URL (default)                                      key env (default)     auth header
    azure        https://<resource>.openai.azure.com (base_url required)  AZURE_OPENAI_API_KEY  api-key
                 -> {base_url}/openai/deployments/{deployment}/...?api-version={api_version}
    gemini       https://generativelanguage.googleapis.com/v1beta/openai  GEMINI_API_KEY        Bearer
    mistral      https://api.mistral.ai/v1                                MISTRAL_API_KEY       Bearer
    groq         https://api.groq.com/openai/v1                           GROQ_API_KEY          Bearer
    together     https://api.together.ai/v1                               TOGETHER_API_KEY      Bearer
    deepseek     https://api.deepseek.com                                 DEEPSEEK_API_KEY      Bearer
    openrouter   https://openrouter.ai/api/v1                             OPENROUTER_API_KEY    Bearer
    vllm         http://localhost:8000/v1                                 (none: optional)      Bearer
    ollama       http://localhost:11434/v1                                (none)                Bearer
    llamacpp     http://localhost:8080/v1                                 (none: optional)      Bearer

Every preset is served by the OpenAI-compatible backend (`backends.openai`): `/chat/completions`,
`/embeddings` and `/completions` below the base URL. A model's own `base_url` / `api_key_env`
override the defaults (a vLLM on another host, a key for a llama.cpp started with --api-key).
Mistral reports stream usage in its last chunk unasked, so `stream_options` is not sent to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["AZURE_API_VERSION", "PRESETS", "Preset", "azure_base_url"]

#: the Azure OpenAI data-plane inference API version used when a model sets none (latest GA)
AZURE_API_VERSION = "2024-10-21"


@dataclass(frozen=True)
class Preset:
    """What a provider preset fills in for a model."""

    #: default base URL (None: the model must give one, e.g. an Azure resource's endpoint)
    base_url: str | None
    #: default environment variable of the API key (None: the server takes no key by default)
    api_key_env: str | None
    #: how the key is sent: `Authorization: Bearer <key>` or an `api-key: <key>` header
    auth: Literal["bearer", "api-key"] = "bearer"
    #: whether streams ask for usage with `stream_options.include_usage`
    stream_usage: bool = True


PRESETS: dict[str, Preset] = {
    "azure": Preset(None, "AZURE_OPENAI_API_KEY", auth="api-key"),
    "gemini": Preset("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    "mistral": Preset("https://api.mistral.ai/v1", "MISTRAL_API_KEY", stream_usage=False),
    "groq": Preset("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together": Preset("https://api.together.ai/v1", "TOGETHER_API_KEY"),
    "deepseek": Preset("https://api.deepseek.com", "DEEPSEEK_API_KEY"),
    "openrouter": Preset("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "vllm": Preset("http://localhost:8000/v1", None),
    "ollama": Preset("http://localhost:11434/v1", None),
    "llamacpp": Preset("http://localhost:8080/v1", None),
}


def azure_base_url(endpoint: str, deployment: str, api_version: str) -> str:
    """The base URL of one Azure OpenAI deployment: `{endpoint}/openai/deployments/{deployment}`
    with `api-version` in the query (kept when the endpoint already names a deployment path or an
    api-version)."""
    u = urlsplit(endpoint)
    path = u.path.rstrip("/")
    if "/openai/deployments/" not in path + "/":
        path = f"{path}/openai/deployments/{deployment}"
    query = dict(parse_qsl(u.query, keep_blank_values=True))
    query.setdefault("api-version", api_version)
    return urlunsplit((u.scheme, u.netloc, path, urlencode(query), ""))
