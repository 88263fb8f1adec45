"""Step prefixes of toy solutions -> continuation tokens/s of the credit stage's engine call vs a per-prefix HF
`generate` loop, and what one prompt with n=M saves over the same prompt repeated M times (prefix reuse).

1. M continuations from each of --prefixes step prefixes (prompt + the first i lines of a reference solution,
   i = 1..n_steps-1, as the `linear` strategy samples them): ONE TransformersEngine call with every prefix and
   SamplingParams(n=M), as tasks/credit.py makes it, vs `model.generate(ids, do_sample=True,
   num_return_sequences=M, max_new_tokens, temperature)` once per prefix (HF then applies its default top_k=50).
   Only generated tokens count (through EOS, not padding); the engine also stops at "\nQuestion:", HF only at
   EOS, so sampled lengths differ: compare tokens/s. Best of --rounds, the two paths interleaved.
2. Prefix reuse alone: engine([p], n=M) with the prefill shared by the M rows (the KV cache copied) vs the same
   call with share_prefill=False (one prefill per row; the samples are the same), for a ~128- and a ~512-token
   prompt. Prefill-only calls (max_new_tokens=1) show what the prefill costs.

Ratios, not asserts: other jobs share the machine (the load average is printed). Without --policy, a default
PolicyConfig policy is trained for --train-steps in a temp dir, with max_length 1024: RoPE has no position
weights, so it is the shipped ~1.9M-param model, only allowed 1024 positions. Prompts that do not leave room for
max_new_tokens in the model's positions (the engine would cut their continuations short) are skipped.

    .venv/bin/python benchmarks/credit_throughput.py [--policy DIR] [--prefixes 64 --m 8 --max-new-tokens 320]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.domains import toy
from mathfactory.tasks.engines import TransformersOptions, load_engine
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.transformers_engine import TransformersEngine
from mathfactory.tasks.policy import PolicyConfig, train_policy

TEMPERATURE = 0.8  # CreditConfig's default


def step_prefixes(problems: list) -> list[str]:
    """prompt + completion[:end of step i] for i = 1..n_steps-1: what the linear strategy continues."""
    out = []
    for p in problems:
        completion = formatting.completion(p.solution)
        steps = split_steps(completion, "lines")
        out += [formatting.prompt(p.question) + completion[: s.end] for s in steps[:-1]]
    return out


def few_shot_prefix(tok, target: int) -> str:
    """Worked examples (prompt + reference solution) of other problems, as many as fit, then the longest step
    prefix of a competition-stage problem that still fits in `target` tokens: a few-shot prompt, as for a base
    model."""
    prefixes = step_prefixes(toy.generate(1, "train", 7, ["competition"]))  # shortest first
    shots = ""
    for p in toy.generate(40, "train", 8):
        example = formatting.prompt(p.question) + formatting.completion(p.solution) + "\n"
        if len(tok(shots + example + prefixes[0]).input_ids) <= target:
            shots += example
    return max((shots + q for q in prefixes if len(tok(shots + q).input_ids) <= target), key=len)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def engine_tokens(engine, prompts: list[str], n: int, max_new: int, seed: int = 0) -> int:
    params = SamplingParams(n=n, temperature=TEMPERATURE, max_new_tokens=max_new, stop=formatting.STOP, seed=seed)
    return sum(c.n_tokens for cs in engine.generate(prompts, params) for c in cs)


@torch.inference_mode()
def hf_loop_tokens(model, tok, prompts: list[str], m: int, max_new: int) -> int:
    tokens = 0
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(
            ids, do_sample=True, num_return_sequences=m, max_new_tokens=max_new, temperature=TEMPERATURE
        )
        is_eos = out[:, ids.shape[1] :] == tok.eos_token_id  # after a row's EOS comes padding
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, is_eos.shape[1])
        tokens += int(ends.sum())
    return tokens


def row(name: str, tokens: int, seconds: float, continuations: int, extra: str = "") -> float:
    print(
        f"  {name:26s} {tokens:7d} {seconds:8.2f} {tokens / seconds:7.0f} {tokens / continuations:8.1f} {extra}"
    )
    return tokens / seconds


def compare_loops(engine, model, tok, prefixes: list[str], m: int, max_new: int, rounds: int) -> None:
    """Part 1: the credit stage's one engine call vs a per-prefix HF generate loop; best of `rounds`, interleaved."""
    engine_tokens(engine, prefixes[:2], 2, 4)  # warm-up; builds the stop-token table once, as a stage does
    hf_loop_tokens(model, tok, prefixes[:1], 2, 4)
    paths = {
        f"engine, 1 call, n={m}": lambda: engine_tokens(engine, prefixes, m, max_new),
        "HF generate per prefix": lambda: hf_loop_tokens(model, tok, prefixes, m, max_new),
    }
    best: dict[str, tuple[int, float]] = {}
    for _ in range(rounds):
        for name, fn in paths.items():
            tokens, seconds = timed(fn)
            if name not in best or tokens / seconds > best[name][0] / best[name][1]:
                best[name] = (tokens, seconds)
    print(f"  {'path':26s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s} {'tok/cont':>8s}")
    fast, slow = (row(name, *best[name], len(prefixes) * m) for name in paths)
    _, prefill = timed(lambda: engine_tokens(engine, prefixes, m, 1))
    print(f"  ratio of tok/s: {fast / slow:.2f}x (target >= 3x)")
    print(f"  the engine call with max_new_tokens=1 (prefill, no decode step): {prefill:.2f} s")


def compare_reuse(engines: dict, prompt: str, m: int, max_new: int, calls: int) -> None:
    """Part 2: one prompt, n=m, with the prefill shared by the m rows vs one prefill per row (the same samples);
    `calls` seeds each, interleaved, summed."""
    totals = {name: [0, 0.0, 0.0] for name in engines}  # tokens, seconds, prefill-only seconds
    for seed in range(calls):
        for name, engine in engines.items():
            tokens, seconds = timed(lambda: engine_tokens(engine, [prompt], m, max_new, seed))  # noqa: B023
            _, prefill = timed(lambda: engine_tokens(engine, [prompt], m, 1, seed))  # noqa: B023
            totals[name] = [a + b for a, b in zip(totals[name], (tokens, seconds, prefill), strict=True)]
    print(f"  {'variant':26s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s} {'tok/cont':>8s} prefill-only s")
    rates = [row(name, int(t), s, m * calls, f"{p:14.3f}") for name, (t, s, p) in totals.items()]
    print(f"  ratio of tok/s, shared / per-row prefill: {rates[0] / rates[1]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, help="a save_pretrained model + tokenizer dir; default: train one")
    ap.add_argument(
        "--train-steps", type=int, default=60, help="SFT steps of the policy trained if no --policy"
    )
    ap.add_argument("--prefixes", type=int, default=64, help="step prefixes in part 1")
    ap.add_argument("--m", type=int, default=8, help="continuations per prefix (M)")
    ap.add_argument("--max-new-tokens", type=int, default=320, help="CreditConfig's default: 320")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both paths")
    ap.add_argument("--rounds", type=int, default=2, help="part 1: interleaved rounds, best kept")
    ap.add_argument("--reuse-calls", type=int, default=6, help="part 2: calls per variant, summed")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="credit-bench-") as tmp:
        policy = args.policy
        if policy is None:
            policy, cfg = Path(tmp), PolicyConfig(max_steps=args.train_steps, max_length=1024)
            metrics, seconds = timed(lambda: train_policy(cfg, toy.generate(4000, "train", 0), policy))
            print(
                f"trained a default PolicyConfig policy ({metrics['params'] / 1e6:.2f}M params) for "
                f"{metrics['steps']} steps in {seconds:.0f} s: loss {metrics['final_loss']:.2f}"
            )
        torch.set_num_threads(args.threads)  # after training, which sets its own
        # The credit stage's engine: TransformersOptions' defaults (batch 64), our thread count.
        engine = load_engine(TransformersOptions(num_threads=args.threads), policy)
        model = AutoModelForCausalLM.from_pretrained(policy).eval()  # own copy: the engine swaps attention
        tok = AutoTokenizer.from_pretrained(policy)
        m, g = args.m, args.max_new_tokens
        room = (engine.max_positions or 10**9) - g  # longer prompts the engine refuses
        prefixes, problems, skipped = [], 0, 0
        for problem in toy.generate(4 * args.prefixes, "train", 0):
            if len(prefixes) >= args.prefixes:
                break
            candidates = step_prefixes([problem])
            fits = [p for p in candidates if len(tok(p).input_ids) <= room]
            prefixes, problems, skipped = prefixes + fits, problems + 1, skipped + len(candidates) - len(fits)
        prefixes = prefixes[: args.prefixes]
        lengths = [len(tok(p).input_ids) for p in prefixes]
        print(
            f"policy {policy}; torch threads {torch.get_num_threads()} (both paths), M={m}, T={TEMPERATURE}, "
            f"max_new_tokens {g}; load average {os.getloadavg()[0]:.2f}"
        )
        print(
            f"\n1. {len(prefixes)} step prefixes of {problems} toy problems (all stages), {min(lengths)}-"
            f"{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}; {skipped} longer skipped: no room for "
            f"max_new_tokens), {m} continuations each"
        )
        compare_loops(engine, model, tok, prefixes, m, g, args.rounds)

        print(
            f"\n2. prefix reuse: {m} continuations of one prompt, {args.reuse_calls} calls (seeds 0..) summed"
        )
        short = min(
            step_prefixes(toy.generate(50, "train", 3)), key=lambda p: abs(len(tok(p).input_ids) - 128)
        )
        long = few_shot_prefix(tok, min(512, room))
        per_row = TransformersEngine(policy, num_threads=args.threads, share_prefill=False)
        engines = {"shared prefill": engine, "one prefill per row": per_row}
        for what, prompt in [("a step prefix", short), ("worked examples + a step prefix", long)]:
            print(f" {len(tok(prompt).input_ids)}-token prompt: {what}")
            compare_reuse(engines, prompt, m, g, args.reuse_calls)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
