"""Gold answer + completion text -> Grade: answer extraction and the fast paths, numbers and star-graph paths (LaTeX
goes to the judge)."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

from mathfactory.tasks.core.calculator import check_annotations
from mathfactory.tasks.core.records import VERDICT_REASONS

MAX_ANSWER_CHARS = 2000
# Real answers nest brackets a few levels; hundreds make math-verify's recursive parser take seconds and then
# give up (or, boxed, return an inner fragment), so such input is refused here, in microseconds.
MAX_NESTING = 50


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str  # one of records.VERDICT_REASONS
    predicted: str | None  # the extracted final answer
    calc_errors: int  # calculator annotations <<a op b=c>> in the completion whose arithmetic is wrong

    def __post_init__(self) -> None:
        if self.reason not in VERDICT_REASONS or self.correct != (self.reason == "correct"):
            raise ValueError(f"inconsistent grade: correct={self.correct} reason={self.reason!r}")


# --- extraction ------------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)( *)")
_BRACE = re.compile(r"\\.|[{}]", re.S)  # `\{` and `\}` are literal braces (sets), not grouping
_BARE_BOX = re.compile(r"[^\s$]+")  # `\boxed 5`
_ANCHOR = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?|^[ \t*#]*answer\s*:", re.I | re.M)
_MATH = re.compile(r"\$\$?(.+?)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
# Plain-number shapes for the last-number fallback; a minus counts only where it cannot be subtraction.
_LAST_NUMBER = re.compile(
    r"(?:(?<![\w.)\]}])-)?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:/[0-9]+)?|\.[0-9]+"
)
# Control characters (NUL, escapes) are never part of an answer: a completion of only those has none, and one glued
# to a number must not turn it into an expression for the LaTeX judge.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\{[^{}]*\}")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[^\W\d_]{3,}")  # any script: 3+ letters not part of a \command


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    tail = deque(pattern.finditer(text), maxlen=1)
    return tail[0] if tail else None


def _boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` / `\\fbox{...}` (nested braces handled), or None."""
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    # One pass pairs every brace, so thousands of truncated boxes stay linear (rescanning each is quadratic).
    closing, stack = {}, []
    for m in _BRACE.finditer(text, boxes[0].end()):
        if m.group() == "{":
            stack.append(m.start())
        elif m.group() == "}" and stack:
            closing[stack.pop()] = m.start()
    for box in reversed(boxes):
        j = box.end()
        if text.startswith("{", j):
            if j in closing:
                return text[j + 1 : closing[j]].strip()
            continue  # truncated box: an earlier complete one may still hold the answer
        if box.group(1) and (m := _BARE_BOX.match(text, j, j + MAX_ANSWER_CHARS)):
            return m.group().rstrip(".,;")
    return None


def _clean(answer: str) -> str:
    """Strip what surrounds an answer: whitespace, markdown bold, math delimiters, a closing period."""
    s = answer.strip().strip("*").strip()
    if not s.startswith(("$", "\\")):
        return s.rstrip(".,;:").rstrip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
            break
    return s.rstrip(".,;:").rstrip()  # not "!": in a math answer that is a factorial


def _after_anchor(text: str) -> str | None:
    """The answer following the last "The answer is" / "final answer is" / "Answer:"."""
    last = _last_match(_ANCHOR, text)
    if last is None:
        return None
    rest = text[last.end() : last.end() + MAX_ANSWER_CHARS].lstrip()
    math = _MATH.match(rest)
    if not math:
        end = _SENTENCE_END.search(rest)
        rest = rest[: end.start()] if end else rest
        math = _MATH.search(rest) if "$" in rest or "\\(" in rest else None  # "is $x = 5$ cm"
    if math:
        return _clean(next(g for g in math.groups() if g is not None)) or None
    return _clean(rest) or None


def _is_bare(text: str) -> bool:
    """A whole completion that is just an answer: one line of math with no prose words."""
    return "\n" not in text and "\\boxed" not in text and not _PROSE_WORD.search(_TEXT_CMD.sub("", text))


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: `#### N`, else the last boxed, else "the answer is ...", else the
    whole text if it is a bare answer, else the last number; None when there is nothing answer-like."""
    text = _CONTROL.sub("", text)
    pos = text.rfind("####")
    if pos >= 0:
        answer = _clean(text[pos + 4 :].split("\n", 1)[0])
        if answer:
            return answer
    if "\\boxed" in text or "\\fbox" in text:
        answer = _boxed(text)
        if answer:
            return answer
    answer = _after_anchor(text)
    if answer:
        return answer
    stripped = _clean(text)
    if stripped and _is_bare(stripped):
        return stripped
    last = _last_match(_LAST_NUMBER, text)
    return last.group() if last else None


# --- numbers -----------------------------------------------------------------------------------------------

_MINUS = ("-", "\u2212")
_NUMBER = re.compile(
    r"(?P<sign>[-+\u2212])?\s*(?:\\?\$\s*(?P<sign2>[-+\u2212])?)?\s*"  # GSM8K "$18", "-$5"; LaTeX "\$18"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)?(?:\.(?P<dec>[0-9]*))?"
    r"(?:\s*/\s*(?P<den>[0-9]+))?"
    r"(?P<suffix>.*)",
    re.S,
)
# What may follow a number and leave it a number: a percent or degree sign, then a unit or word that needs
# a space (or \text{}) before it, so "5x" and "2^{10}" stay expressions for the LaTeX path.
_SUFFIX = re.compile(
    r"\s*(?:%|\\%|\^\{?\\circ\}?|\u00b0)?"
    r"(?:\s*\\(?:text|mbox|mathrm)\{[^{}0-9]*\}|\s+[A-Za-z]{2,}(?:[ .][A-Za-z]+)*)?"
    r"\s*\.?\s*"
)
_FRAC = re.compile(r"(?P<sign>-)?\\[dt]?frac\{\s*(?P<num>[0-9]+)\s*\}\{\s*(?P<den>[0-9]+)\s*\}\s*")
_LATEX_SPACING = re.compile(r"\\[,!;: ]|\{,\}")
_BRACKET = re.compile(r"[()\[\]{}]")
_SPACING_AS = {"{,}": ",", "\\ ": " "}  # `1{,}000` is a thousands separator; `\,` `\!` are thin spaces


def parse_number(s: str) -> Fraction | None:
    """The value of a GSM8K-style number ("1,000", "$18", "18 dollars", "3/4", "25%" as 25, "1000.0", "-5.",
    LaTeX `\\frac{1}{2}`), or None if the text is anything more than one number."""
    if s.isascii() and s.isdigit():
        return Fraction(int(s)) if len(s) < 4000 else None
    s = s.strip()
    if not s.isascii():
        s = s.translate(_digits())
    if len(s) > 200:
        return None
    if s.startswith("$") and s.endswith("$") and len(s) > 2 and not s.startswith("$$"):
        s = s[1:-1].strip()  # "$18$" is math mode, "$18" is dollars
    if "\\" in s or "{" in s:
        s = _LATEX_SPACING.sub(lambda m: _SPACING_AS.get(m.group(), ""), s).strip()
        if s.startswith("{") and s.endswith("}"):
            s = s[1:-1].strip()
        frac = _FRAC.fullmatch(s)
        if frac:
            if int(frac["den"]) == 0:
                return None
            value = Fraction(int(frac["num"]), int(frac["den"]))
            return -value if frac["sign"] else value
    m = _NUMBER.fullmatch(s)
    if m is None or (m["int"] is None and not m["dec"]) or not _SUFFIX.fullmatch(m["suffix"]):
        return None
    dec = m["dec"] or ""
    value = Fraction(int((m["int"] or "0").replace(",", "") + dec), 10 ** len(dec))
    if m["den"] is not None:
        if dec or int(m["den"]) == 0:  # "1.5/2" is an expression, not a GSM8K number
            return None
        value /= int(m["den"])
    return -value if (m["sign"] in _MINUS) != (m["sign2"] in _MINUS) else value


@functools.cache
def _digits() -> dict[int, str]:
    """Every Unicode decimal digit (Arabic-Indic, Devanagari, fullwidth, mathematical bold, ...) -> its ASCII digit:
    `٣` and `５` are the numbers 3 and 5, as int() reads them."""
    every = "".join(map(chr, range(0x80, sys.maxunicode + 1)))
    return {ord(c): str(unicodedata.digit(c)) for c in re.findall(r"\d", every)}


def _nesting(s: str) -> int:
    """Deepest bracket nesting, counting ( [ { alike (intervals like `[0, 1)` still balance)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(s):
        depth += 1 if m.group() in "([{" else -1
        deepest = max(deepest, depth)
    return deepest


def grade_numeric(gold: str, predicted: str) -> bool | None:
    """Whether two plain numbers are equal; None when either is not a plain number (the LaTeX path decides)."""
    if gold.isascii() and gold.isdigit() and predicted.isascii() and predicted.isdigit() and len(predicted) < 4000:
        return int(gold) == int(predicted)  # the usual GSM8K case, without building Fractions
    g = parse_number(gold)
    if g is None:
        return None
    p = parse_number(predicted)
    if p is None:
        return None
    return g == p


def answer_key(answer: str) -> str:
    """What answers the numeric path calls equal have in common: a plain number's exact value ("1,000", "$1000"
    and "1000.0" all give "1000"), else the text without whitespace (the LaTeX path is not consulted)."""
    value = parse_number(answer)
    return str(value) if value is not None else "".join(answer.split())


# --- paths ------------------------------------------------------------------------------------------------

# Star-graph answers (tasks/domains/stargraph.py) are paths of node labels, `3>12>7>41`. They are compared node by
# node here and never reach math-verify, which would read them as a chain of inequalities.
_PATH = re.compile(r"[0-9]+(?:\s*>\s*[0-9]+)*")


def parse_path(answer: str) -> tuple[str, ...] | None:
    """The node labels of a path answer (`3>12>7`; spaces around `>` allowed; one label is a path of one node),
    or None if it is not one. Labels stay strings: `03` is not the node `3`, as answer_key agrees."""
    s = answer.strip()
    return tuple(n.strip() for n in s.split(">")) if _PATH.fullmatch(s) else None


def is_path_answer(gold: str) -> bool:
    """A gold answer that is a path: three nodes or more, as every star-graph path has (arms of >= 2 nodes), so a
    lone number stays a number and a numeric inequality like `3>2` still goes to the judge."""
    if ">" not in gold:
        return False
    nodes = parse_path(gold)
    return nodes is not None and len(nodes) >= 3


def grade_path(gold: str, predicted: str) -> tuple[bool, str]:
    """(correct, reason) of a predicted path against a gold one: equal node by node, else `wrong`; `unparseable`
    when the prediction is not a path at all (`3>>12`, `3>12>`, prose)."""
    nodes = parse_path(predicted)
    if nodes is None:
        return False, "unparseable"
    return (True, "correct") if nodes == parse_path(gold) else (False, "wrong")


def grade_answer(gold: str, completion: str, max_answer_chars: int = MAX_ANSWER_CHARS) -> tuple[bool, str, str | None] | None:
    """(correct, reason, predicted) when no LaTeX judge is needed (no answer, oversized answer, a path gold, both
    plain numbers), else None. No calculator check: a caller that reports only the verdict skips its cost."""
    predicted = extract_answer(completion)
    if predicted is None:
        return False, "no_answer", None
    if len(predicted) > max_answer_chars or len(gold) > max_answer_chars or not gold.strip():
        return False, "unparseable", predicted[:max_answer_chars]
    if is_path_answer(gold):
        return (*grade_path(gold, predicted), predicted)
    same = grade_numeric(gold, predicted)
    if same is None:
        if _nesting(predicted) > MAX_NESTING or _nesting(gold) > MAX_NESTING:
            return False, "unparseable", predicted
        return None
    return same, "correct" if same else "wrong", predicted


def grade_fast(gold: str, completion: str, max_answer_chars: int = MAX_ANSWER_CHARS) -> Grade | None:
    """The full Grade, calculator errors included, when no LaTeX judge is needed, else None."""
    fast = grade_answer(gold, completion, max_answer_chars)
    return None if fast is None else Grade(*fast, check_annotations(completion)[1])
