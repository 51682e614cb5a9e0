"""The airline tools bound from tau2's own OpenAI schemas as plain Python callables TRL can expose."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, Literal

from .runtime import _tau2


# ── dynamic tool binding ───────────────────────────────────────────────────────────────────────────────────────────

_SCALAR_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict}


def _resolve_ref(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return defs.get(ref.split("/")[-1], {})
    return schema


def _json_schema_to_type(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """Python type hint whose `transformers.utils.get_json_schema` rendering matches the JSON schema's shape."""
    schema = _resolve_ref(schema, defs)
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    json_type = schema.get("type")
    if json_type == "array":
        items = schema.get("items")
        return list[_json_schema_to_type(items, defs)] if isinstance(items, dict) else list
    if json_type in _SCALAR_TYPES:
        return _SCALAR_TYPES[json_type]
    options = [o for o in schema.get("anyOf") or schema.get("oneOf") or [] if isinstance(o, dict)]
    non_null = [o for o in options if o.get("type") != "null"]
    if non_null:
        # pydantic renders `list[FlightInfo | dict]` items as anyOf(ref, object): both are JSON objects
        resolved = [_json_schema_to_type(o, defs) for o in non_null]
        hint = resolved[0] if all(r == resolved[0] for r in resolved) else dict
        return hint | None if len(non_null) < len(options) else hint
    return Any


def _one_line(text: str) -> str:
    # get_json_schema splits the Args block on "name:" at a line start; one line per argument keeps it unambiguous.
    return re.sub(r"\s+", " ", text or "").strip()


def _describe_object(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """Describes the fields of an array's object items, which a `list[dict]` hint cannot express."""
    schema = _resolve_ref(schema, defs)
    for option in schema.get("anyOf") or []:
        resolved = _resolve_ref(option, defs) if isinstance(option, dict) else {}
        if resolved.get("properties"):
            schema = resolved
            break
    properties = schema.get("properties") or {}
    if not properties:
        return ""
    required = set(schema.get("required") or [])
    fields = [
        f"{name} ({prop.get('type', 'any')}{', required' if name in required else ''}): "
        + _one_line(prop.get("description", "")).rstrip(".")
        for name, prop in properties.items()
    ]
    return " Each item is an object with fields " + "; ".join(fields) + "."


def _build_tool_function(openai_schema: dict[str, Any]) -> Callable[..., str]:
    """A method `(self, **arguments) -> str` that TRL and `get_json_schema` see with the tool's own signature.

    The declared signature, annotations and Google-style docstring come from tau2's JSON schema; the runtime body takes
    any keyword arguments, so a call with wrong arguments reaches tau2 and comes back as an error observation (as in
    tau2) instead of a Python `TypeError`.
    """
    function = openai_schema["function"]
    name = function["name"]
    parameters = function.get("parameters") or {}
    defs = parameters.get("$defs") or {}
    properties = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    arg_docs: list[str] = []
    ordered = [p for p in properties if p in required] + [p for p in properties if p not in required]
    for param_name in ordered:
        prop = properties[param_name]
        hint = _json_schema_to_type(prop, defs)
        default = inspect.Parameter.empty if param_name in required else prop.get("default")
        params.append(inspect.Parameter(param_name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint))
        annotations[param_name] = hint
        description = _one_line(prop.get("description") or prop.get("title") or param_name)
        if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            description += _describe_object(prop["items"], defs)
        arg_docs.append(f"    {param_name}: {description}")
    annotations["return"] = str

    def tool(self, **arguments: Any) -> str:
        return self._call_tool(name, arguments)

    docstring = (function.get("description") or name).strip()
    if arg_docs:
        docstring += "\n\nArgs:\n" + "\n".join(arg_docs)
    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = docstring
    tool.__annotations__ = annotations
    tool.__signature__ = inspect.Signature(params, return_annotation=str)
    return tool


@functools.lru_cache(maxsize=1)
def airline_tool_schemas() -> tuple[dict[str, Any], ...]:
    """tau2's OpenAI-format schemas of the 14 airline tools (read from its toolkit, no DB needed)."""
    toolkit = _tau2().AirlineTools(None)
    return tuple(tool.openai_schema for tool in toolkit.get_tools().values())
