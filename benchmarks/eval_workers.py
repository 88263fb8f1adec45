"""One evaluation of the toy demo's size (the eval stage's two shards) -> wall seconds with the shards one after the
other (the local runner's max_workers=1) vs in two threads (max_workers=2), side by side, interleaved.

The model has pi_sft's architecture (tasks/models/config.py defaults, ~1.9M parameters) with random weights: it
never says EOS, so every completion runs to --max-new-tokens (a trained demo policy's answers are about that
long). Each shard loads its own engine and judge, as the stage does; grading is the same in both variants.

    .venv/bin/python benchmarks/eval_workers.py [--max-new-tokens 128 --repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mathfactory.tasks.core import formatting  # noqa: E402
from mathfactory.tasks.evaluate import SPECS, EvalConfig, eval_stage  # noqa: E402
from mathfactory.tasks.models.config import TinyConfig  # noqa: E402
from mathfactory.tasks.models.tiny import init_model, train_tokenizer  # noqa: E402
from mathfactory.tasks.policy import POLICY, PolicyConfig  # noqa: E402
from mathfactory.tasks.problems import PROBLEMS, ProblemsConfig  # noqa: E402
from mathfactory.tasks.stage import Run, build, commit, write_shard  # noqa: E402

SFT = eval_stage("sft")


def make_run(lake: str) -> Run:
    """The toy demo's problems and a random-init policy of pi_sft's architecture, committed as the policy stage."""
    run = Run(lake=lake, run_id="bench", seed=0)
    build(PROBLEMS, ProblemsConfig(), run)
    train = [p for p in run.read(PROBLEMS) if p.split == "train"]
    cfg = TinyConfig()
    tokenizer = train_tokenizer([formatting.prompt(p.question) + formatting.completion(p.solution) for p in train],
                                cfg.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        init_model(tokenizer, cfg).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        run.store.put_dir(tmp, run.run_id, POLICY.name)
    commit(POLICY, PolicyConfig(), run, [{"train_rows": len(train)}], time.time())
    return run


def evaluation(run: Run, cfg: EvalConfig, workers: int) -> float:
    """Wall seconds of the eval stage's shards, `workers` at a time in threads (as the local runner runs them)."""
    landed = run.store.stage_path(run.run_id, SFT)
    if run.store.fs.exists(landed):  # the other variant's shards: compute them again
        run.store.fs.rm(landed, recursive=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda s: write_shard(SPECS[SFT], cfg, run, s), range(cfg.shards)))
    took = time.perf_counter() - t0
    rows = sum(1 for _ in run.landed(SPECS[SFT], cfg.shards))
    assert rows == cfg.problems_per_level * len(ProblemsConfig().levels), rows
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-level", type=int, default=20, help="Problems per level (the demo's: 20).")
    args = ap.parse_args()
    cfg = EvalConfig(max_new_tokens=args.max_new_tokens, problems_per_level=args.per_level)  # demo: k=4, 2 shards
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as lake:
        run = make_run(lake)
        one, two = [], []
        for _ in range(args.repeats):  # interleaved: other jobs on the machine weigh on both alike
            one.append(evaluation(run, cfg, 1))
            two.append(evaluation(run, cfg, 2))
    print(f"\nevaluation of the demo's size ({os.cpu_count()} cores, load average {load:.1f} at start): "
          f"{cfg.problems_per_level} problems x 5 levels, greedy + k={cfg.k}, {cfg.max_new_tokens} new tokens, "
          f"{cfg.shards} shards")
    print(f"  shards one after the other (max_workers=1): best {min(one):.1f} s of {[round(t, 1) for t in one]}")
    print(f"  shards in two threads      (max_workers=2): best {min(two):.1f} s of {[round(t, 1) for t in two]}")
    print(f"  speed-up {min(one) / min(two):.2f}x")


if __name__ == "__main__":
    main()
