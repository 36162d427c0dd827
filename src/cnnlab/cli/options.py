"""The help of the generated options: each config field's own comment is its documentation.

A field is documented where it is declared, by the comment on its line (or on the lines of its
statement, when the formatter wrapped it) and by the comment lines right above it::

    # micro-batches whose gradients add up before one optimizer step
    accumulate_grad_batches: int = 1
    lr: float | Literal["auto"] = 0.05  # peak rate per optimizer step; "auto": lr-find picks it

:func:`field_docs` reads those comments from the config's source (:mod:`ast` and a scan of the
comment lines: a few milliseconds, no torch), so `cnnlab train --help`, the docs site's
configuration reference and the code cannot disagree. A field a subclass re-declares without a
comment keeps its parent's. Section headers (``# --- data ---``) and pragmas (``# fmt: skip``)
are not documentation. :meth:`FieldHelp.help` adds the allowed values (``Literal`` types) and the
default. ``tests/test_cli_help.py`` fails on a field without a comment.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

#: comment lines that are not documentation: section headers and tool pragmas
_NOT_DOC = re.compile(r"^(-{2,}.*-{2,}|fmt:\s*\w+|noqa\b.*|type:\s*ignore.*|pragma\b.*)$")


@functools.cache
def _lines(path: str) -> list[str]:
    """The lines of a source file (read once per process)."""
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _class_fields(lines: list[str], name: str) -> tuple[int, ast.ClassDef] | None:
    """(its first line's index, the AST) of class ``name`` up to its first method: the fields.
    Parsing only that part keeps the cost of every command's start-up to about a millisecond."""
    head = re.compile(rf"^class {re.escape(name)}\b")
    first = next((i for i, line in enumerate(lines) if head.match(line)), None)
    if first is None:
        return None
    end = first + 1
    while end < len(lines) and not re.match(r"(\S|    (def|async def|@)\b)", lines[end]):
        end += 1
    tree = ast.parse("\n".join(lines[first:end]))
    node = tree.body[0]
    return (first, node) if isinstance(node, ast.ClassDef) else None


def _comment(line: str) -> str | None:
    """The comment on one line of code (text after a ``#`` outside string quotes), else None.
    Field declarations hold one-line strings only, so following the quotes is enough (and much
    quicker than :mod:`tokenize` over the file, which every command would pay for)."""
    if "#" not in line:
        return None
    hash_at = line.index("#")
    if '"' not in line[:hash_at] and "'" not in line[:hash_at]:
        return line[hash_at + 1 :].strip()
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif line.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif c in "\"'":
            quote = line[i : i + 3] if line[i : i + 3] in ('"""', "'''") else c
            i += len(quote) - 1
        elif c == "#":
            return line[i + 1 :].strip()
        i += 1
    return None


def _own_docs(cls: type) -> dict[str, str]:
    """The comments of the fields ``cls`` itself declares (not its parents')."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return {}
    if path is None:
        return {}
    lines = _lines(path)
    found = _class_fields(lines, cls.__name__)
    if found is None:
        return {}
    offset, node = found
    docs: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        n = offset + stmt.lineno - 1  # lines[n - 1] is line n (1-based) of the file
        while n > 0 and lines[n - 1].lstrip().startswith("#"):  # the block right above
            above.insert(0, lines[n - 1].strip().lstrip("#").strip())
            n -= 1
        lineno, end_lineno = offset + stmt.lineno, offset + (stmt.end_lineno or stmt.lineno)
        after = [_comment(lines[n - 1]) for n in range(lineno, end_lineno + 1)]
        parts = [p for p in above + after if p and not _NOT_DOC.match(p)]
        if parts:
            docs[stmt.target.id] = " ".join(parts)
    return docs


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its comment}`` for every documented field of the dataclass ``cls``; a field
    re-declared without a comment keeps the one of the class that documented it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_docs(klass))
    return docs


def allowed_values(hint: Any) -> tuple[str, ...]:
    """The words a ``Literal`` type (or ``X | Literal[...]``) allows, as text; () for any other."""
    if get_origin(hint) is Literal:
        return tuple(str(a) for a in get_args(hint))
    if get_origin(hint) is Union or type(hint).__name__ == "UnionType":
        return tuple(v for a in get_args(hint) for v in allowed_values(a))
    return ()


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, int) and value >= 100_000:
        return f"{value:_}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class FieldHelp:
    """What the command line and the docs say about one config field."""

    name: str
    flag: str
    doc: str  # the field's comment ("" when it has none: the help test fails on it)
    choices: tuple[str, ...]  # allowed words (Literal types); () = free text or a number
    default: str  # as the user would type it
    is_bool: bool
    type_name: str  # int, float, text, list, ...

    def help(self, default: str | None = None) -> str:
        """One line for argparse: the doc, the allowed values, the default (``%`` escaped).
        ``default``: what to say instead of the field's default (a command whose default is
        another's, e.g. an evaluate's: the run's own option)."""
        text = self.doc[:-1] if self.doc.endswith(".") and not self.doc.endswith("..") else self.doc
        if self.choices and not all(c in self.doc for c in self.choices):
            text += f" [{'|'.join(self.choices)}]"
        if default is not None:
            text += f" (default: {default.format(default=self.default)})"
        elif "default" not in text:
            text += f" (default: {self.default})"
        return text.strip().replace("%", "%%")


def _type_name(hint: Any) -> str:
    if get_origin(hint) in (Union,) or type(hint).__name__ == "UnionType":
        args = [a for a in get_args(hint) if a is not type(None)]
    else:
        args = [hint]
    names = []
    for a in args:
        if get_origin(a) is Literal:
            names.append("word")
        elif get_origin(a) is tuple:
            names.append("list")
        else:
            names.append({int: "int", float: "float", bool: "bool", str: "text"}.get(a, "text"))
    return " | ".join(dict.fromkeys(names))


@functools.cache
def config_help(cls: type) -> tuple[FieldHelp, ...]:
    """One :class:`FieldHelp` per field of the config ``cls``, in declaration order."""
    docs = field_docs(cls)
    hints = get_type_hints(cls)
    result = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        hint = hints[f.name]
        result.append(
            FieldHelp(
                name=f.name,
                flag="--" + f.name.replace("_", "-"),
                doc=docs.get(f.name, ""),
                choices=allowed_values(hint),
                default=_default_text(default),
                is_bool=hint is bool or set(get_args(hint) or [0]) <= {bool, type(None)},
                type_name=_type_name(hint),
            )
        )
    return tuple(result)
