"""Completion text -> Steps y_1..y_n: the units per-step credit assigns Q-values to.

Steps partition the completion exactly (each starts where the previous ended), so `completion[:step.end]` is the
prefix after that step, ready to be continued. A prefix ends after a newline where the split fell at a line
break (the continuation starts a fresh line), or right after a sentence's full stop (the continuation starts
with the space, as a tokenizer writes " Next").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

STYLES = ("lines", "math")
LATEX_SOURCES = ("math500",)  # their solutions are prose + LaTeX: split into sentence steps, not lines
MATH_MIN_CHARS = 30  # shorter pieces ("Thus $x=2$.") carry too little to be worth a Q-value of their own
MATH_MAX_STEPS = 12


@dataclass(frozen=True)
class Step:
    text: str  # the step with surrounding whitespace stripped; completion[start:end] is the raw span
    start: int
    end: int


# Spans where a full stop or a blank line is not a step boundary. An escaped `\$` is matched first so that it
# opens nothing; [asy] diagrams in MATH solutions contain blank lines.
_PROTECTED = re.compile(
    r"\\\$|\$\$.+?\$\$|\$.+?\$|\\\[.+?\\\]|\\\(.+?\\\)|\\begin\{([a-zA-Z*]+)\}.+?\\end\{\1\}|\[asy\].+?\[/asy\]",
    re.S,
)
_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")
# A terminator (possibly the last character inside math, as MATH writes `$x = 3.$`), then a new sentence.
_SENTENCE_END = re.compile(r"[.!?](\$\$|\$|\\\])?(?=(\s+)(?:[A-Z$]|\\\[))")


def style_for(style: str, source: str) -> str:
    """The split a problem's solutions get: `style` (lines, math), or by its source when `style` is auto."""
    return style if style != "auto" else "math" if source in LATEX_SOURCES else "lines"


# A LaTeX command or display math; `$` alone is no sign, GSM8K writes dollars with it.
_LATEX = re.compile(r"\\[a-zA-Z]+|\\[\[(]")


def style_of_text(text: str) -> str:
    """The split for a solution whose source is unknown (a user's file): math where it writes LaTeX and no GSM8K
    `####` answer line, else lines."""
    return "math" if _LATEX.search(text) and "####" not in text else "lines"


def split_steps(
    completion: str, style: str = "lines", *, min_chars: int = MATH_MIN_CHARS, max_steps: int = MATH_MAX_STEPS
) -> list[Step]:
    """The completion's steps; [] if it is empty or whitespace.

    lines (GSM8K, toy): one step per non-empty line, the `#### N` line kept with the last step.
    math (LaTeX): split at blank lines and sentence ends outside math; pieces under `min_chars` join the previous
    one, and the tail is merged so there are at most `max_steps`. Only the math style merges: GSM8K-style lines
    are already steps, and a rollout with too many of them is the credit stage's call, not something to hide."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if not completion.strip():
        return []
    if style == "lines":
        return _partition(completion, _line_cuts(completion))
    return _merge(_partition(completion, _math_cuts(completion)), completion, min_chars, max_steps)


def _partition(text: str, cuts: list[int]) -> list[Step]:
    bounds = [0, *sorted(set(cuts) - {0, len(text)}), len(text)]
    return [Step(text[a:b].strip(), a, b) for a, b in pairwise(bounds)]


def _line_cuts(text: str) -> list[int]:
    """Start offsets of the lines that open a step: every non-empty line but the first and `####` ones."""
    cuts, seen_content = [], False
    for m in re.finditer(r"[^\n]*\n?", text):
        line = m.group().strip()
        if not line:
            continue
        if seen_content and not line.startswith("####"):
            cuts.append(m.start())
        seen_content = True
    return cuts


def _math_cuts(text: str) -> list[int]:
    spans = [m.span() for m in _PROTECTED.finditer(text) if m.group() != "\\$"]

    def inside(p: int) -> tuple[int, int] | None:
        return next(((a, b) for a, b in spans if a <= p < b), None)

    cuts = [m.end() for m in _BLANK_LINE.finditer(text) if not inside(m.start())]
    for m in _SENTENCE_END.finditer(text):
        span = inside(m.start())
        closes_math = span is not None and m.group(1) is not None and m.end() == span[1]
        if (span is None and m.group(1) is None) or closes_math:
            gap = m.group(2)
            cuts.append(m.end() + len(gap) if "\n" in gap else m.end())
    return cuts


def _merge(steps: list[Step], text: str, min_chars: int, max_steps: int) -> list[Step]:
    merged: list[Step] = []
    for s in steps:
        if merged and len(s.text) < max(min_chars, 1):
            merged[-1] = _join(text, merged[-1], s)
        else:
            merged.append(s)
    if len(merged) > 1 and len(merged[0].text) < min_chars:  # nothing before it: join the next one instead
        merged[:2] = [_join(text, merged[0], merged[1])]
    if len(merged) > max_steps:
        merged[max_steps - 1 :] = [_join(text, merged[max_steps - 1], merged[-1])]
    return merged


def _join(text: str, first: Step, last: Step) -> Step:
    return Step(text[first.start : last.end].strip(), first.start, last.end)
