"""Request validation against the gateway's msgspec Structs (`llmroute.gateway.schemas` declares
them): `validate` checks a decoded JSON body and returns it (integral floats of integer fields
as ints), or raises a `GatewayError` 400 whose `param` and message name the field by its JSON
path and say what it takes (`schema_error`); `json_schemas` gives the Structs' JSON Schemas for
the OpenAPI document. Generic over any Struct; the measured costs are in `schemas`' docstring.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
import orjson
from msgspec import Struct
from msgspec import inspect as mi

from llmroute.gateway.asgi import bad_request
from llmroute.gateway.auth import GatewayError

__all__ = ["integer_fields", "json_schemas", "schema_error", "validate"]

_INT_FIELDS: dict[type, tuple[str, ...]] = {}


@functools.cache
def _info(schema: type[Struct]) -> mi.Type:
    """`msgspec.inspect.type_info(schema)`, built once (~10 ms for a request schema)."""
    return mi.type_info(schema)


def _has_int(t: mi.Type) -> bool:
    if isinstance(t, mi.Metadata):
        return _has_int(t.type)
    if isinstance(t, mi.UnionType):
        return any(_has_int(x) for x in t.types)
    return isinstance(t, mi.IntType)


def integer_fields(schema: type[Struct]) -> tuple[str, ...]:
    """The top-level fields of `schema` that take integers (where 417.0 stands for 417)."""
    out = _INT_FIELDS.get(schema)
    if out is None:
        info = _info(schema)
        assert isinstance(info, mi.StructType)
        out = _INT_FIELDS[schema] = tuple(f.encode_name for f in info.fields if _has_int(f.type))
    return out


_WHERE = re.compile(r" - at `\$(.*)`$")
_FIELD = re.compile(r"^Object (missing required|contains unknown) field `([^`]*)`")
_EXPECTED = re.compile(r"^Expected `([^`]*)`(.*?)(?:, got `([^`]*)`)?$")
_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
}


def _describe(expected: str) -> str:
    """`int | null` -> "an integer"; `str | array` -> "a string or an array"."""
    kinds = [k for k in expected.split(" | ") if k != "null"]
    return " or ".join(_NAMES.get(k, k) for k in kinds) or "null"


def _node(info: mi.Type, step: str | int) -> mi.Type | None:
    """The type one step (a field name or a list index) below `info`, where there is one."""
    while isinstance(info, mi.Metadata):
        info = info.type
    cands = info.types if isinstance(info, mi.UnionType) else (info,)
    for t in cands:
        while isinstance(t, mi.Metadata):
            t = t.type
        if isinstance(step, int) and isinstance(t, mi.ListType):
            return t.item_type
        if isinstance(step, str) and isinstance(t, mi.StructType):
            for f in t.fields:
                if f.encode_name == step:
                    return f.type
    return None


def _structs(t: mi.Type | None) -> list[mi.StructType]:
    """The Struct types `t` may be (through annotations and unions)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        return [s for u in t.types for s in _structs(u)]
    return [t] if isinstance(t, mi.StructType) else []


def _hint(schema: type[Struct], steps: list[str | int]) -> str:
    """What the field at `steps` accepts, when the schema knows more than msgspec's message says:
    its allowed values (a tagged union's tags too) and its description."""
    t = _type_at(schema, steps)
    if t is None:
        tags = [
            s.tag
            for s in _structs(_type_at(schema, steps[:-1]))
            if s.tag_field is not None and s.tag_field == steps[-1]
        ]
        return f" It must be one of {tags}." if tags else ""
    desc = ""
    while isinstance(t, mi.Metadata):
        desc = desc or str((t.extra_json_schema or {}).get("description") or "")
        t = t.type
    values: list[Any] = []
    for u in t.types if isinstance(t, mi.UnionType) else (t,):
        while isinstance(u, mi.Metadata):
            desc = desc or str((u.extra_json_schema or {}).get("description") or "")
            u = u.type
        if isinstance(u, mi.LiteralType):
            values += u.values
    out = f" It must be one of {values}." if values else ""
    return out + (f" ({desc})" if desc else "")


def _steps(where: str) -> list[str | int]:
    """`.messages[0].content` -> ["messages", 0, "content"]."""
    return [int(i) if i else n for n, i in re.findall(r"\.([^.\[]+)|\[(\d+)\]", where)]


def _path(steps: list[str | int]) -> str:
    out = ""
    for s in steps:
        out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else s)
    return out


def _show(v: Any) -> str:
    """A short rendering of a JSON value for an error message."""
    if isinstance(v, str):
        return repr(v[:40])
    try:
        return orjson.dumps(v).decode()[:40]
    except TypeError:  # e.g. an int beyond 64 bits
        return repr(v)[:40]


def _value_at(body: Any, steps: list[str | int]) -> Any:
    for s in steps:
        try:
            body = body[s]
        except (KeyError, IndexError, TypeError):
            return None
    return body


def schema_error(
    e: msgspec.ValidationError, schema: type[Struct], body: Any = None, prefix: str = ""
) -> GatewayError:
    """The 400 for a msgspec validation error of `schema` (checking `body`, found at `prefix` in the
    request): `param` and the message's first words name the field by its JSON path; the message
    says what the field takes."""
    pre: list[str | int] = [prefix] if prefix else []
    text = str(e)
    m = _WHERE.search(text)
    if m is None and len(text) > 300:  # a long value in the message: keep its start
        text = text[:300] + "..."
    steps = _steps(m.group(1)) if m else []
    what = text[: m.start()] if m else text
    f = _FIELD.match(what)
    what = what if len(what) <= 200 else what[:200] + "..."  # the client's own value, shortened
    if f:
        steps.append(f.group(2)[:64])
        path = _path(pre + steps)
        if f.group(1) == "missing required":
            return bad_request(f"'{path}' is required.{_hint(schema, steps)}", path)
        parent = _path(pre + steps[:-1])
        known = [x.encode_name for st in _structs(_type_at(schema, steps[:-1])) for x in st.fields]
        where = f"'{parent}'" if parent else "the body"
        return bad_request(f"'{path}': unknown field; {where} takes {', '.join(known)}.", path)
    path = _path(pre + steps)
    if not path:
        return bad_request("The request body must be a JSON object.")
    x = _EXPECTED.match(what)
    if x:
        kind, bound, got = x.groups()
        want = f"{_describe(kind)}{bound.replace('of length', 'with length')}"
        if want == "an integer >= 1":
            want = "a positive integer"
        if got is None:  # a bound: say the value (shortened)
            got = _show(_value_at(body, steps))
        msg = f"'{path}' must be {want}, got {got}."
    elif what.startswith("Invalid enum value"):
        msg = f"'{path}' has an invalid value {what[len('Invalid enum value ') :]}."
    elif what.startswith("Invalid value"):
        msg = f"'{path}' has an invalid value {what[len('Invalid value ') :]}."
    else:
        msg = f"'{path}' is invalid: {what}."
    return bad_request(msg + _hint(schema, steps), path)


def _type_at(schema: type[Struct], steps: list[str | int]) -> mi.Type | None:
    """The type of the field at `steps` in `schema` (None where the path leaves the schema)."""
    t: mi.Type | None = _info(schema)
    for s in steps:
        t = _node(t, s) if t is not None else None
    return t


def validate(body: Any, schema: type[Struct], prefix: str = "") -> dict[str, Any]:
    """Check the decoded JSON `body` against `schema` and return it (the same dict, with integral
    floats of integer fields rewritten as ints); a `GatewayError` 400 naming the field otherwise.
    `prefix`: the path of `body` inside the request (e.g. "llmroute"), for the field names."""
    if type(body) is not dict:
        if prefix:
            fields = ", ".join(f.encode_name for st in _structs(_info(schema)) for f in st.fields)
            raise bad_request(f"'{prefix}' must be an object with any of: {fields}.", prefix)
        raise bad_request("The request body must be a JSON object.")
    for k in integer_fields(schema):
        v = body.get(k)
        if type(v) is float and v.is_integer() and abs(v) < 2**63:  # beyond: no JSON int upstream
            body[k] = int(v)
    try:
        msgspec.convert(body, schema, strict=True)
    except msgspec.ValidationError as e:
        raise schema_error(e, schema, body, prefix) from None
    return body


def json_schemas(
    schemas: list[type[Struct]], ref_template: str = "#/components/schemas/{name}"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The JSON Schemas (OpenAPI 3.1) of `schemas` (refs) and their components, with what each
    Struct's `SCHEMA_EXTRA` adds."""
    more = [x for s in schemas for x in getattr(s, "SCHEMA_STRUCTS", ()) if x not in schemas]
    refs, components = msgspec.json.schema_components([*schemas, *more], ref_template=ref_template)
    for s in schemas:
        extra = getattr(s, "SCHEMA_EXTRA", None)
        if extra:
            components[s.__name__].update(extra)
        props = getattr(s, "SCHEMA_PROPERTIES", None)
        if props:  # "{Name}" in a $ref: that component
            text = orjson.dumps(props).decode()
            for x in getattr(s, "SCHEMA_STRUCTS", ()):
                text = text.replace(
                    f'"{{{x.__name__}}}"', orjson.dumps(ref_template.format(name=x.__name__)).decode()
                )
            components[s.__name__]["properties"].update(orjson.loads(text))
    return list(refs)[: len(schemas)], components
