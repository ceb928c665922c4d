"""The type grammar of Wippy's typed Lua (wippy-modules §11), for the typed-Lua pass
(``_typed.py``): parses a type where the pass found one and returns it as plain data
(the shape ``_types.lua`` builds runtime types from)."""

from __future__ import annotations

from typing import Any

from ._typed_tokens import LUA_KEYWORDS, Tokens, number_value, string_value

__all__ = ["TypeGrammar"]


class TypeGrammar(Tokens):
    """The type half of the typed-Lua parser; the statement half (``_typed._Parser``)
    supplies the expressions a type may hold (``typeof(expr)``)."""

    in_condition = False  # between `extends` and `?`: a `?` there is not T?

    def expr(self, limit: int = 0) -> None:
        raise NotImplementedError

    def exprlist(self) -> None:
        raise NotImplementedError

    def function_type_after_name(self) -> dict[str, Any]:
        """``<T>(params): R``: what follows ``fun`` in a type, or a method's name in an
        interface."""
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
            number = self.literal(number_value)
            return {"k": "literal", "value": -number if negative else number}
        if kind == "string":
            return {"k": "literal", "value": self.literal(string_value)}
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
            return self.function_type_after_name()
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
            return str(self.literal(string_value))
        raise self.error("<name> expected")

    def literal(self, convert: Any) -> Any:
        """The value of the literal token at the cursor (``convert``: number_value or
        string_value), consumed; a malformed one is a syntax error there."""
        try:
            value = convert(self.values[self.i])
        except ValueError as err:
            raise self.error(str(err)) from None
        self.next()
        return value

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
