"""The lexer and token cursor under the typed-Lua pass (``_typed.py``): Lua's tokens
with their offsets, the errors shaped as Lua's (``chunkname:LINE: message near 'tok'``),
and the values of number and string literals (for literal types)."""

from __future__ import annotations

import bisect
import re

__all__ = ["LUA_KEYWORDS", "Tokens", "TypedSyntaxError", "number_value", "string_value"]


class TypedSyntaxError(Exception):
    """A malformed typed construct; ``str()`` reads as a Lua syntax error:
    ``chunkname:LINE: message near 'tok'``."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


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
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", '"': '"', "'": "'", "\n": "\n"}


class Tokens:
    """A source's tokens (``kinds``, ``values``, byte ``starts``/``ends``) and a cursor
    ``i`` over them, with the helpers a recursive-descent parser needs."""

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


def number_value(text: str) -> int | float:
    """The value of a number token as Lua reads it: a hexadecimal integer wraps around
    64 bits, a decimal one too large for them is a float.

    Raises:
        ValueError: malformed (``0x``, ``0x.``), with Lua's message.
    """
    lower = text.lower()
    try:
        if lower.startswith("0x"):
            if "." in lower or "p" in lower:
                return float.fromhex(text)
            value = int(text, 16) & 0xFFFFFFFFFFFFFFFF
            return value - (1 << 64) if value >= 1 << 63 else value
        if any(c in lower for c in ".e") or len(text) > 19:
            return float(text)
        value = int(text)
        return value if value < 1 << 63 else float(text)
    except ValueError:
        raise ValueError("malformed number") from None


def string_value(token: str) -> str:
    """The value of a Lua string literal token (for literal types), one character per
    byte as the source text.

    Raises:
        ValueError: a bad escape sequence, with Lua's message.
    """
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
            digits = body[i + 2:i + 4]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                raise ValueError("hexadecimal digit expected")
            out.append(chr(int(digits, 16)))
            i += 4
        elif nxt.isdigit():
            digits = re.match(r"[0-9]{1,3}", body[i + 1:])
            assert digits is not None
            if int(digits.group()) > 255:
                raise ValueError("decimal escape too large")
            out.append(chr(int(digits.group())))
            i += 1 + len(digits.group())
        elif nxt == "u":
            code = re.match(r"\{([0-9a-fA-F]{1,8})\}", body[i + 2:])
            if code is None:
                raise ValueError("missing '{' or '}' in \\u{xxxx}")
            value = int(code.group(1), 16)
            if value > 0x10FFFF:  # Lua takes up to 2^31 (old UTF-8); a literal type need not
                raise ValueError("UTF-8 value too large")
            out.append(chr(value).encode("utf-8", "surrogatepass").decode("latin-1"))
            i += 2 + len(code.group())
        elif nxt == "z":
            i += 2
            while i < len(body) and body[i] in " \t\r\n\f\v":
                i += 1
        else:
            raise ValueError("invalid escape sequence")
    return "".join(out)
