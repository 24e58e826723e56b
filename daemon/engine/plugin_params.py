"""A plugin's params as a user sets them: `tradingd plugins NAME`.

Each plugin's `Config` dataclass is the one place its params, defaults and checks live, and
the comments beside its fields are their documentation. Before, a user found a param the
shipped TOML files do not write (`kelly_garch`'s `max_kelly`, `stale_data`'s `max_age`) only
from the error that lists the valid keys of a misspelled one. Read from the class's source,
not copied into a document that drifts from it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from typing import Any

__all__ = ["ParamDoc", "param_docs", "toml_value"]


@dataclasses.dataclass(frozen=True)
class ParamDoc:
    name: str
    type: str
    default: Any  # dataclasses.MISSING: required
    above: str  # the comment lines right above the field, joined ("" if none)
    inline: str  # the comment on the field's own line ("" if none)


def _comments(source: str) -> dict[int, str]:
    """{line number (1-based): its comment's text} of `source`."""
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def _field_comments(config_cls: type) -> dict[str, tuple[str, str]]:
    """{field: (the comment lines right above it, the one on its line)}: a block comment
    that starts a group is given to the group's first field. The fields are the class
    body's annotated names (`ast`), so a `name: ...` line in its docstring or a method is
    none."""
    try:
        source = textwrap.dedent(inspect.getsource(config_cls))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):  # no source (compiled, dynamic): no comments
        return {}
    body = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if body is None:
        return {}
    comments = _comments(source)
    lines = source.splitlines()
    out: dict[str, tuple[str, str]] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        number = node.lineno
        above: list[str] = []
        k = number - 1
        while k >= 1 and lines[k - 1].lstrip().startswith("#") and k in comments:
            above.insert(0, comments[k])
            k -= 1
        out.setdefault(node.target.id, (" ".join(above), comments.get(number, "")))
    return out


def param_docs(config_cls: type) -> list[ParamDoc]:
    """Every param of a plugin's `Config`, in declaration order, with its default and the
    source's comments on it."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    comments: dict[str, tuple[str, str]] = {}
    for base in reversed(config_cls.__mro__):  # a subclass's comment wins over its base's
        if dataclasses.is_dataclass(base):
            comments.update(_field_comments(base))
    out = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        above, inline = comments.get(f.name, ("", ""))
        out.append(ParamDoc(f.name, str(kind), default, above, inline))
    return out


def toml_value(value: Any) -> str:
    """A default written as it would be in a TOML inline table (None: unset, said)."""
    if value is dataclasses.MISSING:
        return "(required)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a nested table
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)
