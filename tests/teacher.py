"""Toy questions + reference solutions -> ScriptedTeacher, an Engine whose true Q of every step prefix is known.

A prompt is `formatting.prompt(question)` followed by a prefix of whole solution lines. The teacher continues it with
the reference's remaining lines; if the prefix is not the reference's own beginning, it ends one too high
(`#### answer+1`). So Q(prefix) = 1 iff the prefix is the reference's first lines, else 0. With `error_rate` e,
each continued step line is independently a slip with probability e (its result and the final answer one too
high), so Q = (1 - e)^(step lines left) for a reference prefix.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from mathfactory.tasks.core import formatting
from mathfactory.tasks.engines.base import Completion, SamplingParams

ANSWER_SEP = "\nAnswer:\n"
UNKNOWN = "I do not know this question.\n"  # what the teacher says to a question it has no reference for
_RESULT = re.compile(r"=<<([^<>=]*)=(-?\d+)>>(-?\d+)")  # a calculator annotation and the result after it
_TOKEN = re.compile(r"\s*\S+")


def off_by_one(line: str) -> str:
    """The step line with its calculator result one too high: the arithmetic slip a wrong rollout makes."""

    def bump(m: re.Match[str]) -> str:
        c = int(m.group(2)) + 1
        return f"=<<{m.group(1)}={c}>>{c}"

    slipped, n = _RESULT.subn(bump, line, count=1)
    if n != 1:
        raise ValueError(f"no calculator result to change in {line!r}")
    return slipped


def wrong_completion(solution: str, step: int) -> str:
    """The reference completion with a slip in step `step` (1-based), going on to a final answer one too high."""
    *lines, final = formatting.completion(solution).splitlines()
    if not 1 <= step <= len(lines):
        raise ValueError(f"step must be in 1..{len(lines)}, got {step}")
    lines[step - 1] = off_by_one(lines[step - 1])
    return "\n".join([*lines, f"#### {_answer(final) + 1}"]) + "\n"


def _answer(final_line: str) -> int:
    return int(final_line.split("####", 1)[1])


class ScriptedTeacher:
    """An Engine that knows the reference solution of each of its questions (see the module doc)."""

    def __init__(self, solutions: Mapping[str, str], error_rate: float = 0.0):
        if not 0 <= error_rate < 0.5:  # below 1/2 the slip-free continuation stays the most likely (greedy)
            raise ValueError(f"error_rate must be in [0, 0.5), got {error_rate}")
        self.references = {formatting.prompt(q): formatting.completion(s) for q, s in solutions.items()}
        self.error_rate = error_rate

    def _split(self, prompt: str) -> tuple[str | None, str]:
        """(reference completion or None, the solution prefix after the question)."""
        head, sep, prefix = prompt.partition(ANSWER_SEP)
        return self.references.get(head + sep), prefix

    def true_q(self, prompt: str) -> float:
        """P(a continuation of `prompt` ends with the right answer)."""
        reference, prefix = self._split(prompt)
        if reference is None or not _is_reference_prefix(reference, prefix):
            return 0.0
        steps_left = len(reference.splitlines()) - 1 - len(prefix.splitlines())
        return (1 - self.error_rate) ** steps_left

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        return [[self._sample(p, params, j) for j in range(params.n)] for p in prompts]

    def _sample(self, prompt: str, params: SamplingParams, j: int) -> Completion:
        reference, prefix = self._split(prompt)
        if reference is None:
            return _finish(UNKNOWN, params)
        *steps, final = reference.splitlines(keepends=True)
        done = len(prefix.splitlines())  # whole lines, or a partial last one
        if done > len(steps):
            return _finish("", params)
        wrong = not _is_reference_prefix(reference, prefix)
        # Keyed by (seed, choice, prompt) alone, so a prompt samples the same wherever it sits in a batch.
        rng = random.Random(f"{params.seed}\0{j}\0{prompt}")
        lines = []
        for line in steps[done:]:
            if self.error_rate and not params.greedy and rng.random() < self.error_rate:
                line, wrong = off_by_one(line), True
            lines.append(line)
        lines.append(f"#### {_answer(final) + 1}\n" if wrong else final)
        text = ("\n" if prefix and not prefix.endswith("\n") else "") + "".join(lines)
        return _finish(text, params)


def _is_reference_prefix(reference: str, prefix: str) -> bool:
    return reference.startswith(prefix) and (not prefix or prefix.endswith("\n"))


def _finish(text: str, params: SamplingParams) -> Completion:
    """Cut at the first stop string or after max_new_tokens whitespace tokens; count an EOS when it stops."""
    cuts = [text.index(s) for s in params.stop if s in text]
    if cuts:
        text = text[: min(cuts)]
    tokens = _TOKEN.findall(text)
    if len(tokens) >= params.max_new_tokens:  # no room left for the EOS
        return Completion("".join(tokens[: params.max_new_tokens]), params.max_new_tokens, "length")
    return Completion(text, len(tokens) + 1, "stop")
