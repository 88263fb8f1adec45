"""Problems per second written by the trained synthesizer vs by the teacher, on the same seed-text x stage prompts,
and the share of each path's problems that survives every quality gate, side by side.

The synthesizer path is the run's own `synth_outputs` stage (the synthesis flow runs first; finished stages are
reused). The teacher path sends the same prompts to the configured teacher through the Teacher client with an
empty in-memory cache, so every request is paid. Both outputs then go through the same gates (tasks/gate.py).
On the embedded default the teacher is the toy teacher, a Python function rather than GPT-4: here it is the
fast path, and the ratio says what a small from-scratch model costs next to a free oracle, not what JiuZhang3.0
saves over GPT-4.

    .venv/bin/python benchmarks/synthesis.py --lake /tmp/bench-lake            # the toy preset's synthesis
    .venv/bin/python benchmarks/synthesis.py --preset tests/tiny.yaml --lake /tmp/tiny-lake
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mathfactory.flows.config import load_preset  # noqa: E402
from mathfactory.flows.synthesis import synthesis  # noqa: E402
from mathfactory.tasks.core.records import SynthOutput, stable_id  # noqa: E402
from mathfactory.tasks.distill import check_output, load_templates, teacher  # noqa: E402
from mathfactory.tasks.engines.base import SamplingParams  # noqa: E402
from mathfactory.tasks.gate import GATES, apply_gates  # noqa: E402
from mathfactory.tasks.seeds import SEEDS  # noqa: E402
from mathfactory.tasks.stage import Run  # noqa: E402
from mathfactory.tasks.synthesize import OUTPUTS, prompts  # noqa: E402


def gate_counts(cfg, lake: str, seed: int, outputs: list[SynthOutput], own: bool) -> dict[str, int]:
    """How many outputs each gate dropped, and how many passed all of them ("kept"). `own`: the output's own
    solution must hold up (gates.solutions=synthesizer); else the teacher solves its problem."""
    gates = cfg.gates.model_copy(update={"solutions": "synthesizer" if own else "teacher"})
    _, _, summary = apply_gates(gates, cfg.teacher, lake, seed, outputs)
    return {**summary["dropped"], "kept": summary["kept"]}


def teacher_outputs(cfg, run: Run, seed: int) -> tuple[list[SynthOutput], float]:
    """The teacher on the synthesizer's prompts, every request paid (a fresh cache); outputs and seconds."""
    templates = load_templates(cfg.teacher.templates)
    work = list(prompts(cfg.generate, cfg.generate.stages or list(templates.stages), run.read(SEEDS)))
    client = teacher(cfg.teacher, f"memory://bench-{time.time_ns()}", validate=check_output)
    params = SamplingParams(temperature=cfg.generate.temperature, max_new_tokens=cfg.generate.max_new_tokens,
                            seed=seed)
    t0 = time.perf_counter()
    answers = client.ask([templates.render(stage, s.text) for s, stage in work], params)
    seconds = time.perf_counter() - t0
    return [SynthOutput(stable_id("bench", a.request_id), s.seed_id, stage, a.completion or "",
                        a.completion_tokens, "stop") for (s, stage), a in zip(work, answers, strict=True)], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--lake", default="./lake-bench")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="section.field=value overrides")
    args = ap.parse_args()
    config = load_preset(args.preset, [f"lake={args.lake}", "problems.source=synthesizer", *args.sets])
    cfg, seed = config.synthesis, config.seed_for(None)
    run = Run(lake=config.lake, run_id=config.run_id(), seed=seed, grading=config.verify)
    synthesis(cfg, run)
    marker = run.marker(OUTPUTS.name)
    synth = list(run.read(OUTPUTS))
    synth_s = marker["seconds"]
    teach, teach_s = teacher_outputs(cfg, run, seed)
    rows = [("synthesizer, own solutions", synth, synth_s, True),
            ("synthesizer, teacher solves", synth, synth_s, False),
            ("teacher", teach, teach_s, True)]
    print(f"run {run.run_id}: {len(synth)} prompts (seed text x stage); teacher {cfg.teacher.engine.kind}, "
          f"synthesizer on {cfg.generate.engine.kind}")
    print(f"{'path':<28} {'outputs/s':>10} {'kept/s':>8}  " + " ".join(f"{g[:10]:>10}" for g in GATES) + "       kept")
    kept = {}
    for name, outs, seconds, own in rows:
        c = gate_counts(cfg, config.lake, seed, outs, own)
        left, cells, kept[name] = len(outs), [], c["kept"] / len(outs)
        for g in GATES:
            cells.append(f"{1 - c[g] / left:>10.0%}" if left else f"{'-':>10}")
            left -= c[g]
        print(f"{name:<28} {len(outs) / seconds:>10.1f} {c['kept'] / seconds:>8.1f}  " + " ".join(cells)
              + f"  {c['kept']:>4}/{len(outs)}")
    print(f"outputs/s synthesizer / teacher = {len(synth) / synth_s / (len(teach) / teach_s):.3g}; kept share: "
          + ", ".join(f"{k} {v:.1%}" for k, v in kept.items()) + " (columns: share of what reached each gate)")
    print(f"synthesizer decode: {marker['metrics'].get('tokens_per_s')} tokens/s")


if __name__ == "__main__":
    main()
