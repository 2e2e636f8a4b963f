"""YAML files validated against the published JSON Schemas in pipeline/schemas/, with line numbers."""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml

from pipeline.errors import Problem


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (libyaml's when present: 10x faster) that keeps dates as strings, so the schema, not
    PyYAML, decides what a date is."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("pipeline.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(name: str) -> Any:
    """jsonschema-rs: every error at once, like jsonschema, for a tenth of its import time."""
    return jsonschema_rs.Draft202012Validator(load_schema(name))


def _line_of(node: yaml.Node | None, path: list[str | int]) -> int | None:
    """Walk the composed YAML tree along a JSON path; return the 1-based line of the deepest node found."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _subschema(schema: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
    for key in path:
        schema = schema[key]  # type: ignore[index]
    return schema


def _unknown_fields(error: jsonschema_rs.ValidationError, schema: dict[str, Any], node: yaml.Node | None,
                    line_offset: int, file: Path) -> list[Problem]:
    """One problem per unknown key, on its own line, with the closest allowed name as the fix."""
    path = list(error.instance_path)
    allowed = sorted(_subschema(schema, list(error.schema_path)[:-1]).get("properties", {}))
    where = ".".join(str(p) for p in path)
    problems = []
    for key in sorted(error.kind.unexpected):  # type: ignore[attr-defined]
        line = _line_of(node, [*path, key])
        close = difflib.get_close_matches(str(key), allowed, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"remove it (allowed: {', '.join(allowed)})"
        problems.append(Problem(message=f"unknown field {key!r}" + (f" in {where}" if where else ""), file=file,
                                line=line + line_offset if line is not None else None, fix=fix))
    return problems


def _describe(error: jsonschema_rs.ValidationError, schema: dict[str, Any]) -> tuple[str, str]:
    field = ".".join(str(p) for p in error.instance_path) or "(top level)"
    if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.Required):
        return f"{field}: {error.message}", "add the field"
    hint = _subschema(schema, list(error.schema_path)[:-1]).get("description", "")
    return f"field {field}: {error.message}", f"expected {hint}" if hint else "correct the value"


def _duplicate_keys(node: yaml.Node | None, file: Path, line_offset: int) -> list[Problem]:
    """A key given twice in one mapping: YAML keeps the last silently, so a pasted line would win unseen."""
    problems, todo, visited = [], [node], set()
    while todo:
        current = todo.pop()
        if current is None or id(current) in visited:
            continue
        visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in current.value:
                line = key.start_mark.line + 1 + line_offset
                if isinstance(key, yaml.ScalarNode) and key.value in first:
                    problems.append(Problem(message=f"field {key.value!r} is given twice (first on line "
                                            f"{first[key.value]}); only this one would count", file=file,
                                            line=line, fix="keep one of the two"))
                elif isinstance(key, yaml.ScalarNode):
                    first[key.value] = line
                todo.append(value)
        elif isinstance(current, yaml.SequenceNode):
            todo.extend(current.value)
    return sorted(problems, key=lambda p: p.line or 0)


def parse_yaml(text: str, *, file: Path, schema: str, line_offset: int = 0) -> tuple[Any, list[Problem]]:
    """Parse and validate; returns (data, problems). Data is None when the YAML itself is broken."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()  # the node tree gives line numbers, the data is built from it
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 + line_offset if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(message=f"invalid YAML: {reason}", file=file, line=line,
                              fix="fix the YAML syntax (indentation, quotes, a missing colon)")]
    finally:
        loader.dispose()
    if data is None:
        data = {}
    problems = _duplicate_keys(node, file, line_offset)
    rules = load_schema(schema)
    for error in sorted(_validator(schema).iter_errors(data), key=lambda e: list(map(str, e.instance_path))):
        if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
            problems += _unknown_fields(error, rules, node, line_offset, file)
            continue
        line = _line_of(node, list(error.instance_path))
        message, fix = _describe(error, rules)
        problems.append(Problem(message=message, file=file,
                                line=line + line_offset if line is not None else None, fix=fix))
    return data, problems


def read_yaml(path: Path, *, schema: str) -> tuple[Any, list[Problem]]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None, [Problem(message="file not found", file=path, fix=f"create {path.name}")]
    except UnicodeDecodeError as exc:
        return None, [Problem(message=f"not valid UTF-8 (byte {exc.start})", file=path,
                              fix="save the file as UTF-8")]
    except OSError as exc:  # a folder where the file should be, no permission
        return None, [Problem(message=f"not a file that can be read ({exc.strerror})", file=path,
                              fix=f"make {path.name} a readable file")]
    return parse_yaml(text, file=path, schema=schema)
