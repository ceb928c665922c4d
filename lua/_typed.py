"""Typed Lua to plain Lua 5.5: the annotations of Wippy's gradual type syntax
(wippy-modules §11) become spaces, so every line and column of the user's file stays
where it was, and the type declarations come back as plain data for the runtime type
values (``_types.lua``).

This is a real Lua lexer and a recursive-descent parser for Lua statements and
expressions, plus the type grammar; which token is an annotation depends on where the
parser stands (a local name list, a parameter list, after a function's ``)``, at
statement start, after an expression). It validates only what it must to find the
annotations: the stripped text still goes through Lua's own compiler, which reports
the remaining syntax errors at the same lines.

It also gives code that Lua 5.5 rejects but 5.1-5.4 accept its old meaning: an
assignment to a ``for`` control variable (const in 5.5) gets a ``local i = i;``
copy inserted right after the loop's ``do``, on the same line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ._typed_tokens import LUA_KEYWORDS, TypedSyntaxError
from ._typed_types import TypeGrammar

__all__ = ["Stripped", "TypedSyntaxError", "strip"]


@dataclass(frozen=True, slots=True)
class Stripped:
    """What :func:`strip` makes of a source: plain Lua 5.5 with the same lines, and the
    chunk's ``type``/``interface`` declarations (plain dicts and lists, see
    ``_types.lua`` for their shape)."""

    source: bytes
    declarations: tuple[dict[str, Any], ...]
    changed: bool


# Lua's binary operator priorities (left, right), as lparser.c.
_BINARY = {
    "or": (1, 1), "and": (2, 2),
    "<": (3, 3), ">": (3, 3), "<=": (3, 3), ">=": (3, 3), "~=": (3, 3), "==": (3, 3),
    "|": (4, 4), "~": (5, 5), "&": (6, 6), "<<": (7, 7), ">>": (7, 7),
    "..": (9, 8), "+": (10, 10), "-": (10, 10),
    "*": (11, 11), "/": (11, 11), "//": (11, 11), "%": (11, 11),
    "^": (14, 13),
}
_UNARY_PRIORITY = 12
_BLOCK_END = frozenset(("end", "else", "elseif", "until", "<eof>"))


def strip(source: bytes, chunkname: str) -> Stripped:
    """``source`` as plain Lua 5.5 with the same line (and, except after an inserted
    loop-variable copy, column) of every token, and its type declarations. Cached by
    source: every Lua state loading the same entry shares one result.

    Raises:
        TypedSyntaxError: a malformed typed construct (or Lua the parser cannot follow).
    """
    return _strip(bytes(source), chunkname)


@lru_cache(maxsize=512)
def _strip(source: bytes, chunkname: str) -> Stripped:
    text = source.decode("latin-1")  # one character per byte: offsets are byte offsets
    parser = _Parser(text, chunkname)
    try:
        parser.chunk()
    except RecursionError:
        # Nesting deeper than Python's stack (Lua itself stops at 200 levels): an
        # error of the chunk, not of the node.
        raise parser.error("chunk has too many syntax levels") from None
    if not parser.blanks and not parser.inserts:
        return Stripped(source, tuple(parser.declarations), False)
    return Stripped(parser.output().encode("latin-1"), tuple(parser.declarations), True)


class _Parser(TypeGrammar):
    """The statement half of the pass: finds where annotations stand and blanks them."""

    def __init__(self, text: str, chunkname: str) -> None:
        super().__init__(text, chunkname)
        self.inserts: list[tuple[int, str]] = []
        self.declarations: list[dict[str, Any]] = []
        self.loops: list[tuple[int, frozenset[str], set[str]]] = []  # (insert at, names, assigned)

    # ------------------------------------------------------------------ output

    def output(self) -> str:
        text = self.text
        edits: list[tuple[int, int, str]] = [(s, e, "") for s, e in self.blanks]
        edits += [(at, at, ins) for at, ins in self.inserts]
        edits.sort()
        out: list[str] = []
        pos = 0
        for start, end, insert in edits:
            if start < pos:  # nested blank (a type inside a blanked declaration)
                start = pos
            out.append(text[pos:start])
            if insert:
                out.append(insert)
            if end > start:
                # Keep line breaks, so every later line stays where it was.
                out.append(re.sub(r"[^\n]", " ", text[start:end]))
                pos = end
            else:
                pos = max(pos, start)
        out.append(text[pos:])
        return "".join(out)

    # ------------------------------------------------------------------ statements

    def chunk(self) -> None:
        self.block()
        if self.kind != "<eof>":
            raise self.error("'<eof>' expected")

    def block(self) -> None:
        while self.kinds[self.i] not in _BLOCK_END:
            if self.kinds[self.i] == "return":
                self.next()
                if self.kind not in _BLOCK_END and self.kind != ";":
                    self.exprlist()
                if self.kind == ";":
                    self.next()
                return
            self.statement()

    def statement(self) -> None:
        kind = self.kind
        if kind == ";":
            self.next()
        elif kind == "if":
            start = self.next()
            self.expr()
            self.expect("then")
            self.block()
            while self.kind == "elseif":
                self.next()
                self.expr()
                self.expect("then")
                self.block()
            if self.kind == "else":
                self.next()
                self.block()
            self.close("end", "if", start)
        elif kind == "while":
            start = self.next()
            self.expr()
            self.expect("do")
            self.block()
            self.close("end", "while", start)
        elif kind == "do":
            start = self.next()
            self.block()
            self.close("end", "do", start)
        elif kind == "for":
            self.for_statement()
        elif kind == "repeat":
            start = self.next()
            self.block()
            self.close("until", "repeat", start)
            self.expr()
        elif kind == "function":
            start = self.next()
            self.expect_name()
            while self.kind == ".":
                self.next()
                self.expect_name()
            if self.kind == ":":
                self.next()
                self.expect_name()
            self.funcbody(start)
        elif kind == "local":
            self.next()
            if self.kind == "function":
                start = self.next()
                self.expect_name()
                self.funcbody(start)
            else:
                self.local_names()
                if self.kind == "=":
                    self.next()
                    self.exprlist()
        elif kind == "::":
            self.next()
            self.expect_name()
            self.expect("::")
        elif kind == "break":
            self.next()
        elif kind == "goto":
            self.next()
            self.expect_name()
        elif kind == "name" and self.declaration():
            pass
        else:
            self.expression_statement()

    def declaration(self) -> bool:
        """``type``/``export type``/``interface`` at statement start: parsed, recorded
        and blanked whole. False when the name starts an ordinary statement."""
        i, kinds, values = self.i, self.kinds, self.values
        value = values[i]
        if value == "interface" and kinds[i + 1] == "name":
            self.interface()
            return True
        if value == "export" and kinds[i + 1] == "name" and values[i + 1] == "type" and kinds[i + 2] == "name":
            self.next()
        elif not (value == "type" and kinds[i + 1] == "name" and kinds[i + 2] in ("=", "<")):
            return False
        self.next()
        name = self.expect_name()
        params = self.type_params() if self.kind == "<" else []
        self.expect("=")
        node = self.type()
        self.declarations.append({"name": name, "params": params, "type": node, "line": self.line_of(self.starts[i])})
        self.blank(i, self.i - 1)
        return True

    def interface(self) -> None:
        first = self.next()
        name = self.expect_name()
        params = self.type_params() if self.kind == "<" else []
        bases: list[Any] = []
        if self.kind == ":" or self.at_name("extends"):
            self.next()
            bases.append(self.type())
            while self.kind == ",":
                self.next()
                bases.append(self.type())
        fields: list[Any] = []
        while self.kind != "end":
            if self.kind == "function":
                self.next()
                method = self.field_name()
                fn = self.function_type_after_name()
                fields.append([method, fn, False])
            elif self.kind in ("name", "string") or self.kind in LUA_KEYWORDS:
                if self.at_name("readonly") and self.kinds[self.i + 1] != ":":
                    self.next()
                field = self.field_name()
                optional = self.kind == "?"
                if optional:
                    self.next()
                self.expect(":")
                fields.append([field, self.type(), optional])
            else:
                raise self.error("'end' expected (to close 'interface')")
            if self.kind in (",", ";"):
                self.next()
        self.next()
        node: dict[str, Any] = {"k": "record", "fields": fields}
        if bases:
            node["bases"] = bases
        self.declarations.append({"name": name, "params": params, "type": node,
                                  "line": self.line_of(self.starts[first])})
        self.blank(first, self.i - 1)

    def for_statement(self) -> None:
        start = self.next()
        names = [self.expect_name()]
        self.optional_annotation()
        if self.kind == "=":
            self.next()
            self.expr()
            self.expect(",")
            self.expr()
            if self.kind == ",":
                self.next()
                self.expr()
        else:
            while self.kind == ",":
                self.next()
                names.append(self.expect_name())
                self.optional_annotation()
            self.expect("in")
            self.exprlist()
        do = self.expect("do")
        assigned: set[str] = set()
        self.loops.append((self.ends[do], frozenset(names), assigned))
        self.block()
        self.loops.pop()
        self.close("end", "for", start)
        if assigned:
            # Lua 5.5 makes control variables const; a fresh local of the same name
            # gives the body the 5.4 meaning (assigning it changes this iteration only).
            ordered = [n for n in names if n in assigned]
            self.inserts.append((self.ends[do], f" local {', '.join(ordered)} = {', '.join(ordered)};"))

    def optional_annotation(self) -> None:
        if self.kind == ":":
            first = self.next()
            self.type()
            self.blank(first, self.i - 1)

    def local_names(self) -> None:
        while True:
            self.expect_name()
            if self.kind == "<" and self.kinds[self.i + 1] == "name" and self.kinds[self.i + 2] == ">":
                self.i += 3  # <const> / <close>
            self.optional_annotation()
            if self.kind != ",":
                return
            self.next()

    def funcbody(self, start: int) -> None:
        if self.kind == "<":
            first = self.i
            self.type_params()
            self.blank(first, self.i - 1)
        open_ = self.expect("(")
        if self.kind != ")":
            while True:
                if self.kind == "...":
                    self.next()
                    self.optional_annotation()
                    break
                self.expect_name()
                self.optional_annotation()
                if self.kind != ",":
                    break
                self.next()
        self.close(")", "(", open_)
        if self.kind == ":":
            first = self.next()
            self.return_types()
            self.blank(first, self.i - 1)
        self.block()
        self.close("end", "function", start)

    def expression_statement(self) -> None:
        target = self.suffixedexp()
        if self.kind in ("=", ","):
            targets = [target]
            while self.kind == ",":
                self.next()
                targets.append(self.suffixedexp())
            self.expect("=")
            self.exprlist()
            if self.loops:
                for name in targets:
                    if name is None:
                        continue
                    for _, names, assigned in self.loops:
                        if name in names:
                            assigned.add(name)
        elif target is not None:
            raise self.error("syntax error")

    # ------------------------------------------------------------------ expressions

    def exprlist(self) -> None:
        self.expr()
        while self.kind == ",":
            self.next()
            self.expr()

    def expr(self, limit: int = 0) -> None:
        kind = self.kind
        if kind in ("not", "-", "#", "~"):
            self.next()
            self.expr(_UNARY_PRIORITY)
        else:
            self.simpleexp()
        while True:
            priority = _BINARY.get(self.kinds[self.i])
            if priority is None or priority[0] <= limit:
                return
            self.next()
            self.expr(priority[1])

    def simpleexp(self) -> None:
        kind = self.kind
        if kind in ("number", "string", "nil", "true", "false", "..."):
            self.next()
        elif kind == "{":
            self.table()
        elif kind == "function":
            start = self.next()
            self.funcbody(start)
        else:
            self.suffixedexp()
        self.casts()

    def casts(self) -> None:
        """``expr :: T``, ``expr as T``, ``expr!``: after an operand, before any binary
        operator (they bind tighter)."""
        while True:
            kind = self.kind
            if kind == "::":
                if self.is_label():
                    return
                first = self.next()
                self.type()
                self.blank(first, self.i - 1)
            elif kind == "name" and self.values[self.i] == "as":
                first = self.next()
                self.type()
                self.blank(first, self.i - 1)
            elif kind == "!":
                self.blank(self.i, self.i)
                self.next()
            else:
                return

    def is_label(self) -> bool:
        """``:: name ::`` (spaces or not) is a goto label, not a cast, unless another
        ``name ::`` follows: ``x :: T ::l::`` is a cast to T, then the label l."""
        i = self.i
        kinds = self.kinds
        return (kinds[i + 1] == "name" and kinds[i + 2] == "::"
                and not (kinds[i + 3] == "name" and kinds[i + 4] == "::"))

    def suffixedexp(self) -> str | None:
        """A prefix expression; returns its name when it is a bare name (an
        assignable variable), else None."""
        kind = self.kind
        name: str | None = None
        if kind == "name":
            name = self.values[self.next()]
        elif kind == "(":
            open_ = self.next()
            self.expr()
            self.close(")", "(", open_)
        else:
            raise self.error("unexpected symbol")
        while True:
            kind = self.kind
            if kind == ".":
                self.next()
                self.expect_name()
            elif kind == "[":
                self.next()
                self.expr()
                self.expect("]")
            elif kind == ":":
                self.next()
                self.expect_name()
                self.call_args()
            elif kind in ("(", "string", "{"):
                self.call_args()
            elif kind == "!":
                self.blank(self.i, self.i)
                self.next()
                continue  # `x!` alone is still the variable x
            else:
                return name
            name = None

    def call_args(self) -> None:
        kind = self.kind
        if kind == "string":
            self.next()
        elif kind == "{":
            self.table()
        elif kind == "(":
            open_ = self.next()
            if self.kind != ")":
                self.exprlist()
            self.close(")", "(", open_)
        else:
            raise self.error("function arguments expected")

    def table(self) -> None:
        open_ = self.expect("{")
        while self.kind != "}":
            if self.kind == "[":
                self.next()
                self.expr()
                self.expect("]")
                self.expect("=")
                self.expr()
            elif self.kind == "name" and self.kinds[self.i + 1] == "=":
                self.i += 2
                self.expr()
            else:
                self.expr()
            if self.kind in (",", ";"):
                self.next()
            elif self.kind != "}":
                break
        self.close("}", "{", open_)
