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

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["Stripped", "TypedSyntaxError", "strip"]


class TypedSyntaxError(Exception):
    """A malformed typed construct; ``str()`` reads as a Lua syntax error:
    ``chunkname:LINE: message near 'tok'``."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


@dataclass(frozen=True, slots=True)
class Stripped:
    """What :func:`strip` makes of a source: plain Lua 5.5 with the same lines, and the
    chunk's ``type``/``interface`` declarations (plain dicts and lists, see
    ``_types.lua`` for their shape)."""

    source: bytes
    declarations: tuple[dict[str, Any], ...]
    changed: bool


LUA_KEYWORDS = frozenset("""and break do else elseif end false for function goto if in local nil not or
    repeat return then true until while""".split())
# Wippy also reserves `fun interface as asserts readonly is typeof keyof extends` (§11);
# they stay names here and are recognised where they can stand: `as` after an operand,
# `interface` at statement start, the rest inside types.

_TOKEN = re.compile(r"""
      (?P<ws>[ \t\r\n\f\v]+)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>0[xX](?:[0-9a-fA-F]*\.?[0-9a-fA-F]*)(?:[pP][+-]?[0-9]+)?
                |(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
    | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|<<|>>|//|::|->|[-+*/%^\#&~|<>=(){}\[\];:,.!?@])
    """, re.VERBOSE)
_LONG_OPEN = re.compile(r"\[(=*)\[")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]")

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
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", '"': '"', "'": "'", "\n": "\n"}


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


class _Parser:
    def __init__(self, text: str, chunkname: str) -> None:
        self.text = text
        self.chunkname = chunkname
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.kinds: list[str] = []
        self.values: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self._lex()
        self.i = 0
        self.blanks: list[tuple[int, int]] = []
        self.inserts: list[tuple[int, str]] = []
        self.declarations: list[dict[str, Any]] = []
        self.loops: list[tuple[int, frozenset[str], set[str]]] = []  # (insert at, names, assigned)
        self.in_condition = False  # between `extends` and `?`: a `?` there is not T?

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

    # ------------------------------------------------------------------ errors

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.newlines, offset - 1) + 1

    def error(self, message: str, index: int | None = None) -> TypedSyntaxError:
        i = self.i if index is None else index
        offset = self.starts[i]
        line = self.line_of(offset)
        column = offset - (self.newlines[line - 2] + 1 if line > 1 else 0) + 1
        near = "<eof>" if self.kinds[i] == "<eof>" else f"'{self.values[i]}'"
        return TypedSyntaxError(f"{self.chunkname}:{line}: {message} near {near}", line, column)

    def lex_error(self, message: str, offset: int, near: str) -> TypedSyntaxError:
        line = self.line_of(offset)
        column = offset - (self.newlines[line - 2] + 1 if line > 1 else 0) + 1
        return TypedSyntaxError(f"{self.chunkname}:{line}: {message} near {near}", line, column)

    # ------------------------------------------------------------------ lexer

    def _lex(self) -> None:
        text, n = self.text, len(self.text)
        kinds, values, starts, ends = self.kinds, self.values, self.starts, self.ends
        match = _TOKEN.match
        pos = 0
        while pos < n:
            c = text[pos]
            if c == "-" and text.startswith("--", pos):
                long = _LONG_OPEN.match(text, pos + 2)
                if long:
                    close = "]" + long.group(1) + "]"
                    end = text.find(close, long.end())
                    if end < 0:
                        raise self.lex_error("unfinished long comment", pos, "<eof>")
                    pos = end + len(close)
                else:
                    end = text.find("\n", pos)
                    pos = n if end < 0 else end
                continue
            if c == '"' or c == "'":
                end = self._string_end(pos, c)
                kinds.append("string"); values.append(text[pos:end]); starts.append(pos); ends.append(end)
                pos = end
                continue
            if c == "[":
                long = _LONG_OPEN.match(text, pos)
                if long:
                    close = "]" + long.group(1) + "]"
                    end = text.find(close, long.end())
                    if end < 0:
                        raise self.lex_error("unfinished long string", pos, "<eof>")
                    end += len(close)
                    kinds.append("string"); values.append(text[pos:end]); starts.append(pos); ends.append(end)
                    pos = end
                    continue
            m = match(text, pos)
            if m is None:
                raise self.lex_error("unexpected symbol", pos, f"'{c}'")
            group = m.lastgroup
            end = m.end()
            if group != "ws":
                value = m.group()
                if group == "name":
                    kind = value if value in LUA_KEYWORDS else "name"
                elif group == "number":
                    tail = _NUMBER_TAIL.match(text, end)
                    if tail:  # as llex.c: a number runs into letters, which is malformed
                        raise self.lex_error("malformed number", pos, f"'{value}{tail.group()}'")
                    kind = "number"
                else:
                    kind = value
                kinds.append(kind); values.append(value); starts.append(pos); ends.append(end)
            pos = end
        kinds.append("<eof>"); values.append("<eof>"); starts.append(n); ends.append(n)

    def _string_end(self, pos: int, quote: str) -> int:
        text, n = self.text, len(self.text)
        i = pos + 1
        while i < n:
            c = text[i]
            if c == quote:
                return i + 1
            if c == "\\":
                i += 2
                continue
            if c == "\n":
                break
            i += 1
        raise self.lex_error("unfinished string", pos, f"'{text[pos:i]}'")

    # ------------------------------------------------------------------ token helpers

    @property
    def kind(self) -> str:
        return self.kinds[self.i]

    def at_name(self, value: str) -> bool:
        return self.kinds[self.i] == "name" and self.values[self.i] == value

    def next(self) -> int:
        i = self.i
        self.i += 1
        return i

    def expect(self, kind: str) -> int:
        if self.kinds[self.i] != kind:
            raise self.error(f"'{kind}' expected")
        return self.next()

    def expect_name(self) -> str:
        if self.kinds[self.i] != "name":
            raise self.error("<name> expected")
        return self.values[self.next()]

    def close(self, kind: str, opener: str, open_index: int) -> None:
        if self.kinds[self.i] != kind:
            line = self.line_of(self.starts[open_index])
            if line == self.line_of(self.starts[self.i]):
                raise self.error(f"'{kind}' expected")
            raise self.error(f"'{kind}' expected (to close '{opener}' at line {line})")
        self.i += 1

    def blank(self, first: int, last: int) -> None:
        """Blank tokens first..last (inclusive), and anything between them."""
        if last >= first:
            self.blanks.append((self.starts[first], self.ends[last]))

    def split_angle(self) -> None:
        """Consume one '>' of a '>>' or '>=' token (a generic's close)."""
        i, kind = self.i, self.kinds[self.i]
        if kind == ">":
            self.i += 1
        elif kind in (">>", ">="):
            rest = kind[1]
            self.kinds[i] = self.values[i] = rest
            self.starts[i] += 1
        else:
            raise self.error("'>' expected")

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

    def function_type_after_name(self) -> dict[str, Any]:
        """``<T>(params): R`` of a method signature in an interface."""
        if self.kind == "<":
            self.type_params()
        open_ = self.expect("(")
        params = self.type_param_list(")")
        self.close(")", "(", open_)
        ret: list[Any] = []
        if self.kind == ":":
            self.next()
            ret = self.return_types(single=True)
        return {"k": "func", "params": params, "ret": ret}

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
        """``::name::`` written without spaces: a goto label, not a cast."""
        i = self.i
        return (self.kinds[i + 1] == "name" and self.kinds[i + 2] == "::"
                and self.ends[i] == self.starts[i + 1] and self.ends[i + 1] == self.starts[i + 2])

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

    # ------------------------------------------------------------------ types

    def type_params(self) -> list[dict[str, Any]]:
        """``<T, U: Base>`` of a generic function or type."""
        self.expect("<")
        params: list[dict[str, Any]] = []
        while True:
            param: dict[str, Any] = {"name": self.expect_name()}
            if self.kind == ":" or self.at_name("extends"):
                self.next()
                param["constraint"] = self.type()
            if self.kind == "=":  # a default
                self.next()
                self.type()
            params.append(param)
            if self.kind != ",":
                break
            self.next()
        self.split_angle()
        return params

    def return_types(self, single: bool = False) -> list[Any]:
        """After a function's ``):``: ``T``, ``A, B``, ``(A, B)``, ``()``,
        ``asserts x [is T]``. ``single``: no bare ``A, B`` list (inside a type, where a
        comma ends the function type)."""
        if self.at_name("asserts"):
            self.next()
            self.expect_name()
            if self.at_name("is"):
                self.next()
                self.type()
            return [{"k": "name", "name": "boolean"}]
        types = [self.type()]
        if types[0].get("k") == "tuple" and self.kind != ",":
            return list(types[0]["types"])
        while self.kind == "," and not single:
            self.next()
            types.append(self.type())
        return types

    def type(self) -> dict[str, Any]:
        node = self.union()
        if self.at_name("extends"):  # A extends B ? C : D
            self.next()
            self.in_condition, outer = True, self.in_condition
            self.union()
            self.in_condition = outer
            self.expect("?")
            self.type()
            self.expect(":")
            self.type()
            return {"k": "any", "text": "conditional"}
        return node

    def union(self) -> dict[str, Any]:
        if self.kind == "|":
            self.next()
        members = [self.intersection()]
        while self.kind == "|":
            self.next()
            members.append(self.intersection())
        return members[0] if len(members) == 1 else {"k": "union", "types": members}

    def intersection(self) -> dict[str, Any]:
        if self.kind == "&":
            self.next()
        members = [self.postfix_type()]
        while self.kind == "&":
            self.next()
            members.append(self.postfix_type())
        return members[0] if len(members) == 1 else {"k": "intersection", "types": members}

    def postfix_type(self) -> dict[str, Any]:
        node = self.primary_type()
        while True:
            kind = self.kind
            if kind == "?" and not self.in_condition:
                self.next()
                node = {"k": "optional", "type": node}
            elif kind == "[":
                self.next()
                if self.kind == "]":
                    self.next()
                    node = {"k": "array", "type": node}
                else:  # T[K]: an indexed access type
                    self.type()
                    self.expect("]")
                    node = {"k": "any", "text": "indexed"}
            elif kind == "@":  # a validator: checker metadata, not evaluated (§11.2)
                self.next()
                self.expect_name()
                if self.kind == "(":
                    open_ = self.next()
                    if self.kind != ")":
                        self.exprlist()
                    self.close(")", "(", open_)
            else:
                return node

    def primary_type(self) -> dict[str, Any]:
        kind, value = self.kind, self.values[self.i]
        if kind == "nil":
            self.next()
            return {"k": "name", "name": "nil"}
        if kind in ("true", "false"):
            self.next()
            return {"k": "literal", "value": kind == "true"}
        if kind == "number" or (kind == "-" and self.kinds[self.i + 1] == "number"):
            negative = kind == "-"
            if negative:
                self.next()
            number = _number(self.values[self.next()])
            return {"k": "literal", "value": -number if negative else number}
        if kind == "string":
            return {"k": "literal", "value": _string_value(self.values[self.next()])}
        if kind == "function":  # `function` as a type name: any function
            self.next()
            return {"k": "func", "params": [], "ret": [], "any": True}
        if kind == "{":
            return self.table_type()
        if kind == "(":
            return self.paren_type()
        if kind == "...":  # a variadic in a function type or a tuple
            self.next()
            if self.kind == ":":
                self.next()
            return {"k": "variadic", "type": self.postfix_type() if self.starts_type() else {"k": "name", "name": "any"}}
        if kind != "name":
            raise self.error("type expected")
        if value == "readonly":
            self.next()
            return self.postfix_type()
        if value == "typeof":
            self.next()
            open_ = self.expect("(")
            self.expr()
            self.close(")", "(", open_)
            return {"k": "any", "text": "typeof"}
        if value == "keyof":
            self.next()
            if self.kind == "(":
                open_ = self.next()
                self.type()
                self.close(")", "(", open_)
            else:
                self.postfix_type()
            return {"k": "any", "text": "keyof"}
        if value == "fun":
            self.next()
            if self.kind == "<":
                self.type_params()
            open_ = self.expect("(")
            params = self.type_param_list(")")
            self.close(")", "(", open_)
            ret: list[Any] = []
            if self.kind == ":":
                self.next()
                ret = self.return_types(single=True)
            return {"k": "func", "params": params, "ret": ret}
        if value == "interface" and self.kinds[self.i + 1] == "{":
            self.next()
            return self.table_type()
        self.next()
        name = value
        while self.kind == "." and self.kinds[self.i + 1] == "name":
            self.next()
            name += "." + self.values[self.next()]
        node: dict[str, Any] = {"k": "name", "name": name}
        if self.kind == "<":
            self.next()
            args = [self.type()]
            while self.kind == ",":
                self.next()
                args.append(self.type())
            self.split_angle()
            node["args"] = args
        return node

    def starts_type(self) -> bool:
        kind = self.kind
        return kind in ("name", "nil", "true", "false", "number", "string", "{", "(", "function", "-")

    def type_param_list(self, closer: str) -> list[Any]:
        """Parameters of a function type: ``A``, ``x: A``, ``x?: A``, ``...T``, ``...: T``."""
        return [node for _, node in self.named_types(closer)]

    def named_types(self, closer: str) -> list[tuple[bool, dict[str, Any]]]:
        items: list[tuple[bool, dict[str, Any]]] = []
        while self.kind != closer:
            named = False
            if self.kind == "name" and (self.kinds[self.i + 1] == ":" or (
                    self.kinds[self.i + 1] == "?" and self.kinds[self.i + 2] == ":")):
                named = True
                self.next()
                if self.kind == "?":
                    self.next()
                self.next()
            items.append((named, self.type()))
            if self.kind != ",":
                break
            self.next()
        return items

    def paren_type(self) -> dict[str, Any]:
        """``(A, B) -> R``, ``(x: A) -> (R1, R2)``, ``() -> ()``, ``(T)``, or a tuple."""
        open_ = self.next()
        items = self.named_types(")")
        self.close(")", "(", open_)
        if self.kind == "->":
            self.next()
            ret = self.postfix_type() if self.kind == "(" else self.type()
            rets = list(ret["types"]) if ret.get("k") == "tuple" else [ret]
            return {"k": "func", "params": [node for _, node in items], "ret": rets}
        if len(items) == 1 and not items[0][0] and items[0][1].get("k") != "variadic":
            return items[0][1]  # (T) is T
        return {"k": "tuple", "types": [node for _, node in items]}

    def field_name(self) -> str:
        kind = self.kind
        if kind == "name" or kind in LUA_KEYWORDS:  # keywords are fine as field names
            return self.values[self.next()]
        if kind == "string":
            return str(_string_value(self.values[self.next()]))
        raise self.error("<name> expected")

    def table_type(self) -> dict[str, Any]:
        """``{}``, ``{T}``, ``{[K]: V}``, ``{name: T, opt?: T}``."""
        open_ = self.expect("{")
        if self.kind == "}":
            self.next()
            return {"k": "record", "fields": []}
        if self.kind == "[":
            self.next()
            key = self.type()
            self.expect("]")
            self.expect(":")
            value = self.type()
            if self.kind in (",", ";"):
                self.next()
            self.close("}", "{", open_)
            return {"k": "map", "key": key, "value": value}
        if not self.is_field_start():
            items = [self.type()]
            while self.kind in (",", ";"):
                self.next()
                if self.kind == "}":
                    break
                items.append(self.type())  # {A, B}: a tuple, checked as any table
            self.close("}", "{", open_)
            if len(items) > 1:
                return {"k": "tuple", "types": items, "table": True}
            return {"k": "array", "type": items[0]}
        fields: list[Any] = []
        while self.kind != "}":
            if self.at_name("readonly") and self.kinds[self.i + 1] not in (":", "?"):
                self.next()
            if not self.is_field_start():
                raise self.error("field name expected")
            name = self.field_name()
            optional = self.kind == "?"
            if optional:
                self.next()
            self.expect(":")
            fields.append([name, self.type(), optional])
            if self.kind in (",", ";"):
                self.next()
            elif self.kind != "}":
                break
        self.close("}", "{", open_)
        return {"k": "record", "fields": fields}

    def is_field_start(self) -> bool:
        """At ``name:``, ``name?:``, ``readonly name:`` (keywords and strings count as names)."""
        i, kinds = self.i, self.kinds
        if kinds[i] == "name" and self.values[i] == "readonly" and kinds[i + 1] not in (":", "?"):
            i += 1
        kind = kinds[i]
        if kind in ("name", "string") or kind in LUA_KEYWORDS:
            return kinds[i + 1] == ":" or (kinds[i + 1] == "?" and kinds[i + 2] == ":")
        return False


def _number(text: str) -> int | float:
    lower = text.lower()
    if lower.startswith("0x"):
        if "." in lower or "p" in lower:
            return float.fromhex(text)
        return int(text, 16)
    if any(c in lower for c in ".e"):
        return float(text)
    return int(text)


def _string_value(token: str) -> str:
    """The value of a Lua string literal token (for literal types)."""
    if token.startswith("["):
        level = token.index("[", 1) + 1
        body = token[level:-level]
        return body[1:] if body.startswith("\n") else body
    body = token[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif nxt.isdigit():
            digits = re.match(r"\d{1,3}", body[i + 1:])
            assert digits is not None
            out.append(chr(int(digits.group())))
            i += 1 + len(digits.group())
        elif nxt == "z":
            i += 2
            while i < len(body) and body[i] in " \t\r\n\f\v":
                i += 1
        else:
            out.append(nxt)
            i += 2
    return "".join(out)
