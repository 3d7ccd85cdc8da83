"""The gateway's request bodies, declared once as msgspec Structs: request validation
(`validate`) and the OpenAPI document's request schemas (`json_schemas`) are both derived from them.

    ChatRequest       POST /v1/chat/completions (unknown top-level fields pass through upstream)
    MessagesRequest   POST /v1/messages (Anthropic Messages; unknown fields are ignored)
    RouteRequest      POST /v1/route (a chat request; `prompt` may stand for one user message)
    FeedbackRequest   POST /v1/feedback
    ResponsesRequest  POST /v1/responses (OpenAI Responses; translated to a chat request)
    EmbeddingsRequest, CompletionsRequest, CountTokensRequest   the pass-through endpoints
    RequestPolicy     the chat body's `llmroute` object (strict: unknown fields are a 400)

Validation only checks: the caller keeps its decoded JSON dict (what goes upstream), except that
integral floats of integer fields (417.0) are rewritten as ints. msgspec was chosen over pydantic
by measured cost (2-core box under load, best of 5): a typical chat body's Struct check takes
~1.4 us in msgspec and ~5.8 us as a strict pydantic v2 model; through `validate`, a typical chat
body takes 2.9 us, an 80-message one 20 us and a typical Messages body 3.5 us (the
hand-written checks they replace: 4.6, 33 and 7.8 us). A violation is a `GatewayError` 400 whose
`param` and message name the field by its JSON path (`messages[0].content[2].source.data`).
The validator and `json_schemas` are in `llmroute.gateway.validation` (importable from here too).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

from llmroute.gateway.asgi import bad_request
from llmroute.gateway.validation import integer_fields, json_schemas, validate
from llmroute.gateway.validation import schema_error as schema_error

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionsRequest",
    "CountTokensRequest",
    "EmbeddingsRequest",
    "FeedbackRequest",
    "MessagesRequest",
    "RequestPolicy",
    "ResponsesRequest",
    "RouteRequest",
    "integer_fields",
    "json_schemas",
    "passthrough_input",
    "validate",
]

#: Upper bounds of `n` (OpenAI's) and of the token counts (a 32-bit int: upstream APIs take no more).
MAX_N, MAX_TOKENS = 128, 2**31 - 1

NonEmptyStr = Annotated[str, Meta(min_length=1)]
ModelName = Annotated[
    str,
    Meta(
        min_length=1,
        description="a model name or an alias such as 'llmroute/auto'; an alias takes a per-request "
        "policy suffix: @0.3 or @share=0.3 (share of requests for the strong model), @tradeoff=50",
    ),
]
Tokens = Annotated[int, Meta(ge=1, le=MAX_TOKENS)]
Unit = Annotated[float, Meta(ge=0, le=1)]
NonNegative = Annotated[float, Meta(ge=0)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
JSONObject = dict[str, Any]


# ---- OpenAI chat completions ------------------------------------------------------------------
class RequestPolicy(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The per-request policy (`llmroute` in a chat body); null fields count as absent."""

    tradeoff: NonNegative | None = None
    max_cost: Annotated[NonNegative, Meta(description="USD per request")] | None = None
    min_quality: Unit | None = None
    strong_share: Unit | None = None
    on_unmet: Literal["closest", "reject"] | None = None


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(Struct):
    url: str
    detail: str | None = None


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class AudioPart(Struct, tag_field="type", tag="input_audio"):
    input_audio: JSONObject


class FilePart(Struct, tag_field="type", tag="file"):
    file: JSONObject


class RefusalPart(Struct, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = TextPart | ImagePart | AudioPart | FilePart | RefusalPart


class CalledFunction(Struct):
    name: str
    arguments: Annotated[str, Meta(description="the call's arguments as a JSON string")]


class ToolCall(Struct, tag_field="type", tag="function"):
    id: str
    function: CalledFunction


class CustomToolCall(Struct, tag_field="type", tag="custom"):
    id: str
    custom: JSONObject


class ChatMessage(Struct):
    """One chat message; its other fields pass through."""

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall | CustomToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(Struct):
    name: NonEmptyStr
    description: str | None = None
    parameters: Annotated[JSONObject, Meta(description="a JSON Schema object")] | None = None


class FunctionTool(Struct, tag_field="type", tag="function"):
    function: FunctionDef


class CustomTool(Struct, tag_field="type", tag="custom"):
    custom: JSONObject


class NamedFunction(Struct):
    name: NonEmptyStr


class FunctionChoice(Struct, tag_field="type", tag="function"):
    function: NamedFunction


class CustomChoice(Struct, tag_field="type", tag="custom"):
    custom: NamedFunction


class FormatText(Struct, tag_field="type", tag="text"):
    pass


class FormatJSONObject(Struct, tag_field="type", tag="json_object"):
    pass


class JSONSchemaFormat(Struct):
    name: NonEmptyStr
    schema: Annotated[JSONObject, Meta(description="a JSON Schema object")] | None = None
    description: str | None = None
    strict: bool | None = None


class FormatJSONSchema(Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaFormat


class _ChatOptions(Struct, kw_only=True):
    """The chat fields the gateway or a backend's translation reads, or bounds; any other field
    passes through upstream as it is."""

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Unit | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_N)] | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    stream: bool | None = None
    stream_options: JSONObject | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    tools: list[FunctionTool | CustomTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | CustomChoice | None = None
    response_format: FormatText | FormatJSONObject | FormatJSONSchema | None = None
    llmroute: (
        Annotated[RequestPolicy, Meta(description="per-request routing policy (other fields: 400)")] | None
    ) = None


class ChatRequest(_ChatOptions, kw_only=True):
    """An OpenAI chat completion request (`POST /v1/chat/completions`)."""

    model: ModelName
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]


class RouteRequest(_ChatOptions, kw_only=True):
    """`POST /v1/route`: a chat request, or `prompt` standing for one user message."""

    model: ModelName
    messages: Annotated[list[ChatMessage], Meta(min_length=1)] | None = None
    prompt: str | None = None

    #: what the Struct cannot say itself (checked by `validate_route`)
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
            {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        ]
    }


class FeedbackRequest(Struct):
    """`POST /v1/feedback`: an outcome (any other fields too) for a request id."""

    request_id: Annotated[str, Meta(description="the x-llmroute-request-id of a response")]
    quality: Unit | None = None
    score: Annotated[Unit | None, Meta(description="the same as quality")] = None
    thumbs: Annotated[
        Literal["up", "down"] | bool | None, Meta(description='"up" = quality 1, "down" = quality 0')
    ] = None
    label: Annotated[
        Literal["good", "correct", "helpful", "partial", "bad", "wrong", "incorrect", "unhelpful"] | None,
        Meta(
            description="good/correct/helpful = quality 1, partial = 0.5, bad/wrong/incorrect/unhelpful = 0"
        ),
    ] = None

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {"minProperties": 2}


# ---- Anthropic Messages -----------------------------------------------------------------------
CacheControl = Annotated[JSONObject, Meta(description='e.g. {"type": "ephemeral"}')]


class _Block(Struct, tag_field="type", kw_only=True):
    cache_control: CacheControl | None = None


class TextBlock(_Block, tag="text", kw_only=True):
    text: str
    citations: list[Any] | None = None


class SystemText(Struct, kw_only=True):
    """A system prompt block: a `TextBlock` alone (msgspec checks a tag only within a union)."""

    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[Any] | None = None


class ImageBase64(Struct, tag_field="type", tag="base64"):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(Struct, tag_field="type", tag="url"):
    url: str


class ImageBlock(_Block, tag="image", kw_only=True):
    source: ImageBase64 | URLSource


class DocBase64(Struct, tag_field="type", tag="base64"):
    media_type: str
    data: str


class DocText(Struct, tag_field="type", tag="text"):
    media_type: str
    data: str


class DocContent(Struct, tag_field="type", tag="content"):
    content: str | list[TextBlock | ImageBlock]


class DocumentBlock(_Block, tag="document", kw_only=True):
    source: DocBase64 | DocText | URLSource | DocContent
    title: str | None = None
    context: str | None = None
    citations: JSONObject | None = None


class ToolUseBlock(_Block, tag="tool_use", kw_only=True):
    id: str
    name: str
    input: JSONObject


class ToolResultBlock(_Block, tag="tool_result", kw_only=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str


class RedactedThinkingBlock(Struct, tag_field="type", tag="redacted_thinking"):
    data: str


ContentBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class AnthropicMessage(Struct):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class InputSchema(Struct):
    """A tool's JSON Schema (its other keywords pass through)."""

    type: Literal["object"] = "object"


class AnthropicTool(Struct):
    """A client tool (server tools are not supported)."""

    name: NonEmptyStr
    input_schema: InputSchema
    description: str | None = None
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class _ToolChoice(Struct, tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(_ToolChoice, tag="auto", kw_only=True):
    pass


class ToolChoiceAny(_ToolChoice, tag="any", kw_only=True):
    pass


class ToolChoiceNone(_ToolChoice, tag="none", kw_only=True):
    pass


class ToolChoiceTool(_ToolChoice, tag="tool", kw_only=True):
    name: NonEmptyStr


class AnthropicMetadata(Struct):
    user_id: str | None = None


class MessagesRequest(Struct, kw_only=True):
    """An Anthropic Messages request (`POST /v1/messages`); a null optional field counts as absent."""

    model: ModelName
    max_tokens: Tokens
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: str | list[SystemText] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceNone | ToolChoiceTool | None = None
    stop_sequences: list[str] | None = None
    temperature: Unit | None = None
    top_p: Unit | None = None
    top_k: Annotated[int, Meta(ge=0, le=MAX_TOKENS)] | None = None
    stream: bool | None = None
    metadata: AnthropicMetadata | None = None


# ---- OpenAI Responses -------------------------------------------------------------------------
class InputText(Struct, tag_field="type", tag="input_text"):
    text: str


class OutputText(Struct, tag_field="type", tag="output_text", kw_only=True):
    text: str
    annotations: list[Any] | None = None


class InputImage(Struct, tag_field="type", tag="input_image", kw_only=True):
    image_url: Annotated[str, Meta(description="an image URL or data: URL (file ids are not supported)")]
    detail: Literal["low", "high", "auto"] | None = None


class InputFile(Struct, tag_field="type", tag="input_file", kw_only=True):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class RefusalContent(Struct, tag_field="type", tag="refusal"):
    refusal: str


ResponsesPart = InputText | OutputText | InputImage | InputFile | RefusalContent


class ResponsesMessage(Struct, kw_only=True):
    """An input message (`type` may be left out)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ResponsesPart]
    type: Literal["message"] | None = None
    id: str | None = None
    status: str | None = None


class FunctionCallItem(Struct, tag_field="type", tag="function_call", kw_only=True):
    """A function call the model made (sent back with its output)."""

    call_id: NonEmptyStr
    name: NonEmptyStr
    arguments: Annotated[str, Meta(description="the call's arguments as a JSON string")]
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(Struct, tag_field="type", tag="function_call_output", kw_only=True):
    """The output of a function call, for the model."""

    call_id: NonEmptyStr
    output: str | list[ResponsesPart]
    id: str | None = None
    status: str | None = None


#: input item `type` -> its schema (no `type`: a message)
RESPONSES_ITEMS: dict[str, type[Struct]] = {
    "message": ResponsesMessage,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


class ResponsesFunctionTool(Struct, kw_only=True):
    """A function tool (built-in tools are not translated; a lone tagged Struct would not require
    its tag, hence the explicit `type`)."""

    type: Literal["function"]
    name: NonEmptyStr
    parameters: Annotated[JSONObject, Meta(description="a JSON Schema object")] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponsesToolChoice(Struct, kw_only=True):
    type: Literal["function"]
    name: NonEmptyStr


class ResponsesFormatJSONSchema(Struct, tag_field="type", tag="json_schema", kw_only=True):
    name: NonEmptyStr
    schema: Annotated[JSONObject, Meta(description="a JSON Schema object")]
    description: str | None = None
    strict: bool | None = None


class ResponsesText(Struct, kw_only=True):
    format: FormatText | FormatJSONObject | ResponsesFormatJSONSchema | None = None


class ResponsesReasoning(Struct, kw_only=True):
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: str | None = None


Unsupported = Annotated[
    None,
    Meta(
        description="not supported: the gateway keeps no conversation state; send the whole conversation in 'input'"
    ),
]


class ResponsesRequest(Struct, kw_only=True):
    """An OpenAI Responses API request (`POST /v1/responses`), translated to a chat request; a null
    optional field counts as absent, other fields are ignored."""

    model: ModelName
    input: str | Annotated[list[JSONObject], Meta(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Tokens | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Unit | None = None
    stream: bool | None = None
    tools: list[ResponsesFunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: ResponsesText | None = None
    reasoning: ResponsesReasoning | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: Unsupported = None
    conversation: Unsupported = None
    background: (
        Annotated[Literal[False], Meta(description="background responses are not supported")] | None
    ) = None
    llmroute: (
        Annotated[RequestPolicy, Meta(description="per-request routing policy (other fields: 400)")] | None
    ) = None

    #: the input items' schemas (a message's `type` is optional, so msgspec cannot tag them)
    SCHEMA_STRUCTS: ClassVar[tuple[type[Struct], ...]] = tuple(RESPONSES_ITEMS.values())
    SCHEMA_PROPERTIES: ClassVar[dict[str, Any]] = {
        "input": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "anyOf": [
                            {"$ref": "{ResponsesMessage}"},
                            {"$ref": "{FunctionCallItem}"},
                            {"$ref": "{FunctionCallOutputItem}"},
                        ]
                    },
                },
            ]
        }
    }


# ---- pass-through endpoints: embeddings, completions, count_tokens ----------------------------
NamedModel = Annotated[str, Meta(min_length=1, description="a configured model (aliases route chat only)")]
#: a string, strings, a token array or token arrays (checked by `passthrough_input`)
TokenId = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
TextsOrTokens = str | Annotated[list[str | TokenId | list[TokenId]], Meta(min_length=1)]
_TOKEN_ID = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}
TEXTS_OR_TOKENS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        {"type": "array", "minItems": 1, "items": _TOKEN_ID},
        {"type": "array", "minItems": 1, "items": {"type": "array", "items": _TOKEN_ID}},
    ]
}


class EmbeddingsRequest(Struct, kw_only=True):
    """`POST /v1/embeddings`, passed through to the named model (other fields pass through too)."""

    model: NamedModel
    input: TextsOrTokens
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1, le=16384)] | None = None
    user: str | None = None

    SCHEMA_PROPERTIES: ClassVar[dict[str, Any]] = {"input": TEXTS_OR_TOKENS_SCHEMA}


class CompletionsRequest(Struct, kw_only=True):
    """`POST /v1/completions` (legacy text completions), passed through to the named model."""

    model: NamedModel
    prompt: TextsOrTokens
    max_tokens: Tokens | None = None
    n: Annotated[int, Meta(ge=1, le=MAX_N)] | None = None
    best_of: Annotated[int, Meta(ge=1, le=MAX_N)] | None = None
    stream: bool | None = None
    stream_options: JSONObject | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Unit | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: str | list[str] | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    suffix: str | None = None
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    user: str | None = None

    SCHEMA_PROPERTIES: ClassVar[dict[str, Any]] = {"prompt": TEXTS_OR_TOKENS_SCHEMA}


class CountTokensRequest(Struct, kw_only=True):
    """`POST /v1/messages/count_tokens` (Anthropic): the input tokens of a Messages request."""

    model: ModelName
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: str | list[SystemText] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceNone | ToolChoiceTool | None = None


class ResponseObject(Struct, tag_field="object", tag="response"):
    """A Responses API `response` (the chat answer translated back)."""

    id: str
    status: str
    model: str
    output: list[JSONObject]
    created_at: int | None = None
    usage: JSONObject | None = None


class TokenCount(Struct):
    """The answer of /v1/messages/count_tokens."""

    input_tokens: int


class Embeddings(Struct, tag_field="object", tag="list"):
    """Embeddings as the upstream answered them."""

    data: list[JSONObject]
    model: str
    usage: JSONObject | None = None


class TextCompletion(Struct):
    """A text completion as the upstream answered it."""

    id: str
    choices: list[JSONObject]
    model: str
    object: str | None = None
    usage: JSONObject | None = None


def passthrough_input(value: Any, field: str) -> None:
    """400 unless `value` (a validated `TextsOrTokens`) is a string, strings, a token array or token
    arrays: not a mix."""
    if isinstance(value, str):
        return
    kinds = {type(x) for x in value}
    if len(kinds) > 1:
        raise bad_request(
            f"'{field}' must be a string, an array of strings, an array of token ids or an array of "
            "token id arrays, not a mix.",
            field,
        )


# ---- response bodies (documented in the OpenAPI document; not validated at run time) ---------
class OpenAIErrorDetail(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(Struct):
    """The error body of every endpoint but /v1/messages."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(Struct):
    type: str
    message: str


class AnthropicError(Struct, tag_field="type", tag="error"):
    """The error body of /v1/messages."""

    error: AnthropicErrorDetail


class ChatCompletion(Struct):
    """A chat completion as the upstream answered it (fields beyond these pass through)."""

    id: str
    choices: list[JSONObject]
    model: str
    object: str | None = None
    created: int | None = None
    usage: JSONObject | None = None


class AnthropicReply(Struct, tag_field="type", tag="message"):
    """An Anthropic Message."""

    id: str
    role: Literal["assistant"]
    content: list[JSONObject]
    model: str
    stop_reason: str | None = None
    usage: JSONObject | None = None


class RankedCandidate(Struct):
    model: str
    expected_quality: float | None
    expected_cost: float | None
    base_url: Annotated[str, Meta(description="scheme://host[:port]/path: no credentials, no query")]


class Decision(Struct, tag_field="object", tag="llmroute.decision"):
    """`POST /v1/route`: the decision a chat request would get (no upstream call)."""

    id: str
    model: str
    reason: str
    ranked: list[RankedCandidate]
    alias: str | None = None
    router: str | None = None
    policy: JSONObject | None = None
    constraints_met: bool | None = None
    unmet_constraints: list[str] | None = None


class FeedbackAck(Struct):
    ok: bool
    status: str | None = None  # "pending" (202): the trace is not in the store yet, kept until it lands
    message: str | None = None


class ModelList(Struct, tag_field="object", tag="list"):
    data: list[JSONObject]


class Health(Struct):
    status: str
    models: int
    aliases: list[str]
    breakers: dict[str, str]
    state: dict[str, Any] | None = None
    learning: dict[str, Any] | None = None
    pending_feedback: dict[str, Any] | None = None
