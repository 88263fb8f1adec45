"""Question -> prompt text, and reference solution -> completion text: the one chat-free format every model sees."""

PROMPT_TEMPLATE = "Question: {question}\nAnswer:\n"
# A model that runs past its answer starts a new question; cut there.
STOP = ("\nQuestion:",)


def prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question.strip())


def completion(solution: str) -> str:
    return solution.strip() + "\n"
