"""Synthesis prompts and solve prompts -> the toy domain's answers: the embedded default's teacher, behind the same
Engine protocol as vLLM or an OpenAI-compatible server (tests serve it over HTTP like a real one).

Given an education-stage prompt it writes a toy problem of that stage about the people, item and quantities of
the seed text, in the synthesis output format; given off-topic prose it can only write a word-counting riddle
(the kind of problem gradient influence should learn to avoid). Given `formatting.prompt(question)` it solves toy
questions with the domain's solver, which is how the `solvable` gate asks it whether a problem holds together.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from mathfactory.tasks.core import formatting, synthesis
from mathfactory.tasks.domains import toy
from mathfactory.tasks.engines.base import Completion, SamplingParams, request_seeds

CANNOT = "I cannot solve this question.\n"
_LEVEL = re.compile(r"^Level: (.+)$", re.M)
_EXCERPT = re.compile(r"Math content:\n(.*?)\n\nGuidelines:", re.S)
_QUESTION = re.compile(re.escape(formatting.PROMPT_TEMPLATE).replace(r"\{question\}", "(.*)"), re.S)


def n_words(text: str) -> int:
    """The toy teacher's token count: whitespace words, as a stand-in for a tokenizer."""
    return len(text.split())


class ToyTeacher:
    def __init__(self, templates: synthesis.Templates) -> None:
        toy_levels = {level.name: level for level in toy.BY_LEVEL}
        # A stage the toy domain does not know is written as its simplest stage.
        self.toy_level = {p.level: toy_levels.get(name, toy.BY_LEVEL[0]) for name, p in templates.stages.items()}

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt, seed in zip(prompts, request_seeds(prompts, params.seed), strict=True):
            texts = [self.answer(prompt, random.Random(f"{seed}-{0 if params.greedy else j}"))
                     for j in range(params.n)]
            out.append([Completion(t, n_words(t), "stop", prompt_tokens=n_words(prompt)) for t in texts])
        return out

    def answer(self, prompt: str, rng: random.Random) -> str:
        question = _QUESTION.fullmatch(prompt)
        if question:
            solved = toy.solve(question.group(1))
            return formatting.completion(solved[0]) if solved else CANNOT
        level, excerpt = _LEVEL.search(prompt), _EXCERPT.search(prompt)
        if not (level and excerpt):
            return CANNOT
        return self.write(self.toy_level.get(level.group(1).strip(), toy.BY_LEVEL[0]), excerpt.group(1), rng)

    @staticmethod
    def write(level: toy.Level, excerpt: str, rng: random.Random) -> str:
        """A problem of the toy `level` about what the excerpt mentions, in the synthesis output format."""
        item = next((i for i in toy.ITEMS if re.search(rf"\b{i}\b", excerpt)), None)
        numbers = [int(n) for n in re.findall(r"\b\d+\b", excerpt)]
        if item is None and not numbers:
            sentence = re.split(r"(?<=[.!?])\s+", excerpt.strip())[0].rstrip(".!?")
            k = len(sentence.split())
            return synthesis.write(f'How many words are in the sentence "{sentence}"?',
                                   ["Count the words one by one.", f"The sentence has {k} words."], str(k))
        people = sorted((n for n in toy.NAMES if re.search(rf"\b{n}\b", excerpt)), key=excerpt.index)
        starts = [n for n in numbers if 2 <= n <= level.limit // 2]
        question, solution, answer = toy.make_problem(rng, level, item, people, starts)
        return synthesis.write(question, solution.splitlines()[:-1], str(answer))
