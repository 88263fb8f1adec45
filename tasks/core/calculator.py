"""Calculator annotations `<<48/2=24>>` -> whether their arithmetic holds, by exact rational evaluation."""

from __future__ import annotations

import operator
import re
from fractions import Fraction

MAX_EXPR_CHARS = 500
MAX_DEPTH = 50  # parenthesis nesting; keeps the recursive descent far from Python's recursion limit
MAX_EXPONENT = 1000
MAX_BITS = 20_000  # largest numerator/denominator a power may produce: `9**9**9` must not eat the heap

# `//` is not in the brief's list but real GSM8K annotations use it (they were Python expressions).
_VALID = re.compile(r"(?:\s*(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+|\*\*|//|[-+*/()]))*\s*")
_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+|\*\*|//|[-+*/()]")
_SIMPLE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([-+*])\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*")
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_INT_SIMPLE = re.compile(r"\s*([0-9]+)\s*([-+*/])\s*([0-9]+)\s*")
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")
# A result may carry a sign, thousands separators, or be a fraction (`<<3/4=3/4>>` is in GSM8K test).
_RESULT = re.compile(r"\s*([-+]?)\s*((?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+)(?:\s*/\s*([0-9]+))?\s*")

Number = int | Fraction


class CalcError(ValueError):
    """The expression is not plain arithmetic (or is too large to evaluate safely); the message says why."""


def _number(tok: str) -> Number:
    whole, dot, frac = tok.partition(".")
    if not dot:
        return int(whole)
    # Fraction(int, 10**k) is exact and several times faster than Fraction(str).
    return Fraction(int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac))


def _power(base: Number, exp: Number) -> Number:
    if isinstance(exp, Fraction):
        if exp.denominator != 1:
            raise CalcError("non-integer exponent")
        exp = exp.numerator
    if abs(exp) > MAX_EXPONENT:
        raise CalcError(f"exponent {exp} is out of bounds")
    b = Fraction(base)
    if max(b.numerator.bit_length(), b.denominator.bit_length()) * abs(exp) > MAX_BITS:
        raise CalcError("power too large")
    if exp < 0 and b == 0:
        raise CalcError("division by zero")
    result = b**exp
    return result.numerator if result.denominator == 1 else result


class _Parser:
    """Recursive descent over a token list; same precedence and associativity as Python's arithmetic."""

    __slots__ = ("toks", "i", "depth")

    def __init__(self, toks: list[str]):
        self.toks, self.i, self.depth = toks, 0, 0

    def peek(self) -> str:
        return self.toks[self.i]  # the list ends with a "" sentinel, so no bounds check

    def take(self) -> str:
        tok = self.toks[self.i]
        if not tok:
            raise CalcError("unexpected end of expression")
        self.i += 1
        return tok

    def expr(self) -> Number:
        value = self.term()
        while (op := self.toks[self.i]) in ("+", "-"):
            self.i += 1
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Number:
        value = self.unary()
        while (op := self.toks[self.i]) in ("*", "/", "//"):
            self.i += 1
            rhs = self.unary()
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise CalcError("division by zero")
            elif op == "//":
                value = value // rhs
            else:
                value = Fraction(value) / rhs
                if value.denominator == 1:
                    value = value.numerator
        return value

    def unary(self) -> Number:
        negate = False
        while (op := self.toks[self.i]) in ("-", "+"):  # a loop, not recursion: "------1" must not blow the stack
            self.i += 1
            negate ^= op == "-"
        value = self.power()
        return -value if negate else value

    def power(self) -> Number:
        base = self.atom()
        if self.toks[self.i] == "**":
            self.i += 1
            return _power(base, self.unary())  # right-associative, binds tighter than unary minus on its left
        return base

    def atom(self) -> Number:
        tok = self.take()
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise CalcError("parentheses nested too deep")
            value = self.expr()
            if self.take() != ")":
                raise CalcError("unbalanced parentheses")
            self.depth -= 1
            return value
        if tok[0].isdigit() or tok[0] == ".":
            return _number(tok)
        raise CalcError(f"unexpected {tok!r}")


def evaluate(expr: str) -> Fraction:
    """Exact value of an arithmetic expression: numbers, + - * / // **, parentheses, unary signs; nothing else."""
    return Fraction(_evaluate(expr))


def _evaluate(expr: str) -> Number:
    simple = _SIMPLE.fullmatch(expr)
    if simple:  # most annotations are `a op b`: skip the tokenizer and parser (3x faster)
        a, op, b = simple.groups()
        return _BINARY[op](_number(a), _number(b))
    if len(expr) > MAX_EXPR_CHARS:
        raise CalcError("expression too long")
    if not _VALID.fullmatch(expr):
        raise CalcError("not plain arithmetic")
    toks = _TOKEN.findall(expr)
    toks.append("")
    parser = _Parser(toks)
    try:
        value = parser.expr()
    except RecursionError:  # a long `2**2**2**...` chain; the length cap makes this nearly unreachable
        raise CalcError("expression nested too deep") from None
    if toks[parser.i]:
        raise CalcError(f"unexpected {toks[parser.i]!r}")
    return value


def _result(text: str) -> tuple[Number, int] | None:
    """The written result and its number of decimals, or None if it is not a plain number."""
    m = _RESULT.fullmatch(text)
    if m is None:
        return None
    digits = m.group(2).replace(",", "")
    value = _number(digits)
    if m.group(3) is not None:
        if int(m.group(3)) == 0:
            return None
        value = Fraction(value, int(m.group(3)))
    return (-value if m.group(1) == "-" else value), len(digits.partition(".")[2])


def check_annotations(text: str) -> tuple[int, int]:
    """(annotations checked, annotations wrong) over every `<<expr=result>>` in a completion.

    An annotation that is not plain arithmetic is not checked. A decimal result counts as right when it is
    the exact value correctly rounded to the decimals written (`<<2/3=.67>>`); an integer result must be exact.
    """
    if "<<" not in text:
        return 0, 0
    checked = wrong = 0
    for lhs, rhs in _ANNOTATION.findall(text):
        if rhs.isascii() and rhs.isdigit() and (simple := _INT_SIMPLE.fullmatch(lhs)):
            # The common GSM8K case, integers only (`<<16-3-4=9>>` is not): exact int arithmetic, no Fractions.
            a, op, b = simple.groups()
            a, b, c = int(a), int(b), int(rhs)
            if op == "/" and b == 0:
                continue
            checked += 1
            wrong += (a != b * c) if op == "/" else (_BINARY[op](a, b) != c)
            continue
        written = _result(rhs)
        if written is None:
            continue
        try:
            exact = _evaluate(lhs)
        except CalcError:
            continue
        checked += 1
        value, decimals = written
        if value != exact and (decimals == 0 or abs(exact - value) * 2 * 10**decimals > 1):
            wrong += 1
    return checked, wrong
