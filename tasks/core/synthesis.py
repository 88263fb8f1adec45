"""Seed text + education stage -> synthesis prompt, and a teacher's or synthesizer's output -> problem, solution,
answer. The prompts themselves are data (tasks/prompts/*.yaml); this module only fills and parses them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

CUE = "Problem:"  # every prompt ends with it, so a completion starts with the problem's text
SOLUTION, FINAL = "Solution:", "Final Answer:"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SOLUTION_LINE = re.compile(rf"^[ \t]*{SOLUTION}", re.M)


@dataclass(frozen=True)
class StagePrompt:
    level: str
    instruction: str
    guidelines: str


@dataclass(frozen=True)
class Templates:
    template: str  # with {instruction} {level} {excerpt} {guidelines} {output}; must end with CUE
    output: str  # the output-format guideline every stage shares
    stages: Mapping[str, StagePrompt]

    @classmethod
    def from_dict(cls, data: Mapping, origin: str = "templates") -> Templates:
        """Validate a loaded YAML document; errors name `origin` and the missing piece."""
        missing = [k for k in ("template", "output", "stages") if k not in data]
        if missing:
            raise ValueError(f"{origin}: missing {', '.join(missing)}")
        if not str(data["template"]).rstrip().endswith(CUE):
            raise ValueError(f"{origin}: the template must end with the cue {CUE!r}")
        stages = {}
        for name, stage in dict(data["stages"]).items():
            fields = {k: str((stage or {}).get(k, "")).strip() for k in ("level", "instruction", "guidelines")}
            empty = [k for k, v in fields.items() if not v]
            if empty:
                raise ValueError(f"{origin}: stage {name!r} has no {', '.join(empty)}")
            stages[name] = StagePrompt(**fields)
        if not stages:
            raise ValueError(f"{origin}: no stages")
        return cls(str(data["template"]).rstrip(), str(data["output"]).strip(), stages)

    def render(self, stage: str, excerpt: str) -> str:
        if stage not in self.stages:
            raise ValueError(f"unknown education stage {stage!r}; templates have {', '.join(self.stages)}")
        s = self.stages[stage]
        # str.replace, not str.format: an excerpt may hold braces ({x | x > 0}) and must go in verbatim.
        text = self.template
        for key, value in (("instruction", s.instruction), ("level", s.level), ("guidelines", s.guidelines),
                           ("output", self.output), ("excerpt", excerpt.strip())):
            text = text.replace("{" + key + "}", value)
        return text


@dataclass(frozen=True)
class Parsed:
    question: str
    steps: tuple[str, ...]
    answer: str | None  # None when the output has no (or an empty) final answer line

    @property
    def solution(self) -> str:
        """The solution in the GSM8K format the rest of the factory reads (steps, then `#### answer`)."""
        return "\n".join([*self.steps, f"#### {self.answer}"])


def parse(completion: str) -> Parsed | str:
    """A completion written after the cue -> Parsed, or the reason it does not parse."""
    text = completion.strip()
    if text.startswith(CUE):  # chat models often repeat the cue
        text = text[len(CUE):].lstrip()
    m = _SOLUTION_LINE.search(text)
    if m is None:
        return f"no {SOLUTION!r} line"
    question, rest = text[:m.start()].strip(), text[m.end():]
    if not question:
        return "empty problem"
    body, sep, answer = rest.partition(FINAL)
    steps = tuple(line.strip() for line in body.splitlines() if line.strip())
    if not steps:
        return "empty solution"
    answer = answer.strip().splitlines()[0].strip().rstrip(".").strip() if sep and answer.strip() else None
    return Parsed(question, steps, answer or None)


def write(question: str, steps: list[str] | tuple[str, ...], answer: str) -> str:
    """The output format, as a completion after the cue (what parse() reads back)."""
    return f" {question.strip()}\n{SOLUTION}\n" + "".join(f"{s}\n" for s in steps) + f"{FINAL} {answer}\n"


def chunk(text: str, max_chars: int) -> list[str]:
    """Split a text into chunks of at most `max_chars`, packing whole sentences; only a sentence longer than
    `max_chars` is cut, at a space."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    chunks: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text.strip()):
        sentence = " ".join(sentence.split())
        while sentence:
            if not current and len(sentence) > max_chars:  # one overlong sentence: cut at the last space that fits
                cut = sentence.rfind(" ", 0, max_chars + 1)
                cut = cut if cut > 0 else max_chars
                chunks.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            elif not current:
                current, sentence = sentence, ""
            elif len(current) + 1 + len(sentence) <= max_chars:
                current, sentence = f"{current} {sentence}", ""
            else:
                chunks.append(current)
                current = ""
    if current:
        chunks.append(current)
    return chunks
