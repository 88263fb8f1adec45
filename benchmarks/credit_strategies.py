"""Synthetic incorrect rollouts with a known true Q per step -> continuations each credit strategy spends, and how
often binary search finds the same first Q = 0 pit as labelling every step.

Three regimes of true Q: flat and well above 0 until the pit, then two where Q_0 can be low and Q falls toward
the pit, so that M draws which all fail can fake a zero. Each strategy draws from its own random stream, as
separate runs would; `lin=lin2` (two linear runs) is the agreement that sampling noise alone allows.

Run: .venv/bin/python benchmarks/credit_strategies.py [--rollouts 2000 --m 8 --round-size 2 --seed 0].
Prints tables; asserts nothing. `measure` takes any targets and sampler, so real rollouts can replace the traces.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from statistics import mean

from mathfactory.tasks.core.credit import Target, credit
from mathfactory.tasks.core.steps import Step
from mathfactory.tasks.core.strategies import STRATEGIES, Continuation, Sampler


def synthetic_traces(
    n: int, seed: int, q0: tuple[float, float], decay: float, steps: tuple[int, int] = (2, 12)
) -> dict[str, list[float]]:
    """True Q_0..Q_n of incorrect rollouts: Q_0 ~ U(*q0), shrinking by a factor U(1 - decay, 1) a step until
    a pit drawn uniformly in 1..n, then 0. The more it decays, the smaller Q gets before the pit, and the more
    often M draws that all fail there pass for a zero (a false pit) under any strategy."""
    rng = random.Random(seed)
    out = {}
    for r in range(n):
        n_steps = rng.randint(*steps)
        pit = rng.randint(1, n_steps)
        q = [rng.uniform(*q0)]
        for i in range(1, n_steps + 1):
            q.append(0.0 if i >= pit else q[-1] * rng.uniform(1 - decay, 1.0))
        out[f"r{r}"] = q
    return out


def bernoulli_sampler(q_true: dict[str, list[float]], seed: int) -> Sampler:
    rng = random.Random(seed)
    return lambda requests: [
        [Continuation(rng.random() < q_true[key][i], "") for _ in range(k)] for key, i, k in requests
    ]


def measure(targets: list[Target], sample: Sampler, strategy: str, m: int, round_size: int) -> dict:
    """Per rollout: continuations spent on steps >= 1 and the pit found; plus the number of sample calls (rounds)."""
    calls = 0

    def counted(requests):
        nonlocal calls
        calls += 1
        return sample(requests)

    rows, _ = credit(targets, counted, strategy=strategy, m=m, round_size=round_size, max_steps=64)
    used, pit = defaultdict(int), {}
    for r in rows:
        used[r.rollout_id] += r.n_continuations if r.step_index > 0 else 0
        if r.is_pit:
            pit[r.rollout_id] = r.step_index
    return {"used": dict(used), "pit": pit, "rounds": calls}


def targets_of(q_true: dict[str, list[float]], q0_draws: int, seed: int) -> list[Target]:
    """Incorrect rollouts; Q_0 is estimated from `q0_draws` earlier rollouts of the question, as the stage does
    (a question with none solved is dropped, as the stage drops it)."""
    rng = random.Random(seed)
    out = []
    for key, q in q_true.items():
        solved = sum(rng.random() < q[0] for _ in range(q0_draws))
        if solved:
            steps = tuple(Step(f"step {i}", i - 1, i) for i in range(1, len(q)))
            out.append(Target(key, key, steps, False, solved, q0_draws))
    return out


def report(q_true: dict[str, list[float]], m: int, round_size: int, seed: int) -> None:
    targets = targets_of(q_true, q0_draws=8, seed=seed)
    truth = {key: next(i for i, q in enumerate(qs) if i and q == 0) for key, qs in q_true.items()}
    runs = {"linear2": "linear", **{s: s for s in STRATEGIES}}  # a second linear run: its own reproducibility
    res = {
        name: measure(targets, bernoulli_sampler(q_true, seed + 1 + j), s, m, round_size)
        for j, (name, s) in enumerate(runs.items())
    }
    pit = {name: r["pit"] for name, r in res.items()}
    by_n = defaultdict(list)
    for t in targets:
        by_n[len(t.steps)].append(t.rollout_id)

    print(
        f"{len(targets)} incorrect rollouts ({len(q_true) - len(targets)} dropped: Q_0 = 0); M={m}, round size "
        f"{round_size}. Mean continuations per rollout; share of rollouts whose pits agree"
    )
    print(
        f"{'steps':>5} {'n':>5} {'linear':>7} {'scan':>7} {'binary':>7} {'lin/bin':>7} {'bin=lin':>7} "
        f"{'lin=lin2':>8} {'lin=true':>8} {'bin=true':>8}"
    )

    def line(label: str, keys: list[str]) -> None:
        cost = {s: mean(res[s]["used"][k] for k in keys) for s in STRATEGIES}

        def agree(a: dict, b: dict) -> float:
            return mean(a[k] == b[k] for k in keys)

        print(
            f"{label:>5} {len(keys):>5} {cost['linear']:>7.1f} {cost['scan']:>7.1f} {cost['binary']:>7.1f} "
            f"{cost['linear'] / cost['binary']:>7.2f} {agree(pit['binary'], pit['linear']):>7.1%} "
            f"{agree(pit['linear'], pit['linear2']):>8.1%} {agree(pit['linear'], truth):>8.1%} "
            f"{agree(pit['binary'], truth):>8.1%}"
        )

    for n in sorted(by_n):
        line(str(n), by_n[n])
    line(">=8", [k for n, keys in by_n.items() if n >= 8 for k in keys])
    line("all", [t.rollout_id for t in targets])
    print(
        "rounds (sample calls, each one batched engine call): "
        + ", ".join(f"{s} {res[s]['rounds']}" for s in STRATEGIES)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollouts", type=int, default=2000)
    ap.add_argument("--m", type=int, default=8, help="continuations per labelled step")
    ap.add_argument("--round-size", type=int, default=2, help="scan/binary draw this many at a time")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for q0, decay in (((0.5, 0.9), 0.0), ((0.2, 0.9), 0.05), ((0.2, 0.9), 0.2)):
        print(f"\n== true Q_0 ~ U{q0}, falling up to {decay:.0%} a step until the pit, then 0")
        report(synthetic_traces(args.rollouts, args.seed, q0, decay), args.m, args.round_size, args.seed)


if __name__ == "__main__":
    main()
