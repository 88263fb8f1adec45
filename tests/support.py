"""Paths the tests share. Import as `from support import ...`: importing `conftest` by name is ambiguous
(tests/engines has its own conftest.py)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_PRESET = REPO / "tests" / "tiny.yaml"  # every stage for real, in seconds
SHARED_DATA = REPO.parent / "shared" / "data"
# The tiny from-scratch model the model and training tests build (tasks/models/config.py:TinyConfig fields): learns a
# few toy problems in seconds on one thread.
TINY_MODEL = dict(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_length=256,
                  max_steps=20, batch_size=8, learning_rate=3e-3)


def tiny_policy(out: Path) -> Path:
    """An existing model for a run to sample with (policy.pretrained, as the nightly refresh needs): the tiny
    preset's pi_sft on 32 toy problems, trained here in seconds."""
    from mathfactory.flows.config import load_preset
    from mathfactory.tasks.domains import toy
    from mathfactory.tasks.policy import train_policy

    train_policy(load_preset(str(TINY_PRESET)).policy, toy.generate(32, "train", 0), out)
    return out


def seed_rows(start: int, n: int) -> list[dict]:
    """GSM8K-format seed rows, as a user (or the nightly refresh's incoming folder) supplies them."""
    return [{"question": f"Noa has {i} pens. Noa buys 3 more pens. How many pens does Noa have now?",
             "answer": f"Noa buys 3, so {i}+3=<<{i}+3={i + 3}>>{i + 3} pens.\n#### {i + 3}"}
            for i in range(start, start + n)]


def toy_training_sets(problems: list) -> tuple[list, list]:
    """SFT rows (the reference solutions) and per-step pairs (reference vs the same solution with its first
    result off by one, the pit at step 0) for toy problems: training sets with a signal, without a policy good
    enough to sample them."""
    import re

    from mathfactory.tasks.core import formatting
    from mathfactory.tasks.core.records import PreferencePair, SFTExample, stable_id

    def wrong(solution: str) -> str:
        first = re.search(r">>(\d+)", solution)
        bad = str(int(first.group(1)) + 1)
        return solution[: first.start(1)] + bad + solution[first.end(1):].split("\n", 1)[0] + f"\n#### {bad}"

    sft = [SFTExample(stable_id(p.problem_id), "rft", p.problem_id, None, formatting.prompt(p.question),
                      formatting.completion(p.solution)) for p in problems]
    pairs = [PreferencePair(stable_id(p.problem_id, "pair"), "step_cut", p.problem_id, formatting.prompt(p.question),
                            formatting.completion(p.solution), formatting.completion(wrong(p.solution)), None,
                            stable_id(p.problem_id, "wrong"), 0) for p in problems]
    return sft, pairs
