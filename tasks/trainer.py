"""The one training entry point, run in a process of its own: `python -m mathfactory.tasks.trainer SPEC.json`.

A spec says which TRL trainer runs (`scratch`: tokenizer + SFT of a tiny model from scratch; `sft`: SFTTrainer from a
model; `dpo`: DPOTrainer from a model, which is also the reference), on which rows (a local JSONL file), with which
TRL arguments, into which directory. The process saves model + tokenizer there and writes metrics.json. Apart from
the flow, an OOM or a crash fails the training task and not the flow, GPU memory is returned when it exits, and
`accelerate launch` can run it on several GPUs.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mathfactory.tasks.core.cores import cgroup_cpus, threads_per_job
from mathfactory.tasks.core.skips import too_few_rows
from mathfactory.tasks.models.loading import from_pretrained

METRICS = "metrics.json"
# How many jobs (flow runs) this machine runs at once, e.g. a process worker's --limit (`mathfactory worker
# --jobs N` sets both): each trainer takes its share of the cores instead of all of them.
JOBS_ENV = "MATHFACTORY_JOBS"
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
RECIPES = Path(__file__).parent / "recipes"
TRAINERS = ("scratch", "sft", "dpo")
# What a model directory must hold before a trainer may start from it.
MODEL_FILES = {"config.json": ("config.json",), "tokenizer": ("tokenizer.json", "tokenizer_config.json"),
               "weights": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")}


class TrainingError(RuntimeError):
    """The trainer process failed; the message says how and ends with its last lines of output."""


@functools.cache
def recipe(trainer: str) -> dict[str, Any]:
    """The TRL arguments of a trainer's recipe file (tasks/recipes/{trainer}.yaml)."""
    import yaml

    return yaml.safe_load((RECIPES / f"{trainer}.yaml").read_text()) or {}


@dataclass
class TrainJob:
    trainer: Literal["scratch", "sft", "dpo"]
    rows: str  # JSONL: prompt/completion (scratch, sft) or prompt/chosen/rejected (dpo)
    out_dir: str
    dataset: str  # the rows' name in messages, e.g. runs/toy-1234/rft
    init: str | None = None  # the model directory to start from; None for `scratch`
    args: dict[str, Any] = field(default_factory=dict)  # TRL config kwargs; PolicyConfig fields for `scratch`


def missing_model_files(path: Path, need: Iterable[str] = tuple(MODEL_FILES)) -> list[str]:
    """The MODEL_FILES entries of `need` that `path` lacks, each as 'a or b'."""
    return [" or ".join(MODEL_FILES[w]) for w in need if not any((path / n).is_file() for n in MODEL_FILES[w])]


def check_model_dir(path: str | Path, what: str = "model directory", url: str | None = None,
                    need: Iterable[str] = tuple(MODEL_FILES)) -> None:
    """A Hugging Face model directory has its config, a tokenizer and weights (`need` of them): say which are
    missing, and where a model is one level down, before a loader's traceback would. `url`: the name to show."""
    path, shown = Path(path), url or str(path)
    if not path.is_dir():
        raise ValueError(f"{what}: {shown} does not exist")
    if missing := missing_model_files(path, need):
        below = sorted(d.name for d in path.iterdir() if (d / "config.json").is_file())
        hint = f"; a model is one level down, in: {', '.join(below)}" if below else ""
        raise ValueError(f"{what}: {shown} is not a model directory (missing: {'; '.join(missing)}){hint}")


def command(spec_path: Path, num_processes: int = 1) -> list[str]:
    """This module as a process: plain Python on one device, `accelerate launch` over several GPUs."""
    if num_processes > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
                "-m", __name__, str(spec_path)]
    return [sys.executable, "-m", __name__, str(spec_path)]


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU limit (a pod's)."""
    cores = len(os.sched_getaffinity(0))
    try:
        limit = cgroup_cpus(CPU_MAX.read_text())
    except OSError:
        limit = None
    return min(cores, limit or cores)


def jobs_on_this_machine() -> int:
    raw = os.environ.get(JOBS_ENV, "1")
    try:
        jobs = int(raw)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ValueError(f"${JOBS_ENV}={raw!r}: expected the number of jobs this machine runs at once (1 or more)")
    return jobs


def trainer_threads(num_processes: int = 1) -> str:
    """Torch threads for each trainer process: OMP_NUM_THREADS if the environment sets it (Ray sets it to a
    task's CPUs), else this job's share of the usable cores."""
    return os.environ.get("OMP_NUM_THREADS") or str(
        threads_per_job(usable_cores(), jobs_on_this_machine(), num_processes))


def launch(spec: TrainJob, num_processes: int = 1, tail: int = 25) -> dict[str, Any]:
    """Run `spec` in a child process and return its metrics; a failure raises TrainingError with its last lines."""
    if spec.init is not None:
        check_model_dir(spec.init, f"{spec.trainer} trainer's initial model")
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = Path(spec.rows).with_suffix(".job.json")  # beside the rows, in the caller's temporary folder
    spec_path.write_text(json.dumps(asdict(spec)))
    cmd = command(spec_path, num_processes)
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
                               "OMP_NUM_THREADS": trainer_threads(num_processes)})
    if done.returncode != 0:
        how = (f"was killed by signal {-done.returncode}" + (" (out of memory?)" if done.returncode == -9 else "")
               if done.returncode < 0 else f"exited with status {done.returncode}")
        lines = (done.stdout + done.stderr).strip().splitlines()[-tail:]
        raise TrainingError(f"{spec.trainer} trainer on {spec.dataset} {how}: {shlex.join(cmd)}\n" + "\n".join(lines))
    return json.loads((out / METRICS).read_text())


def _rows(spec: TrainJob) -> list[dict[str, Any]]:
    with open(spec.rows, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_size(dataset: str, rows: int, batch: int) -> None:
    """A training set smaller than one batch is refused, naming it and its row count (the pipeline skips such a
    set before it gets here: tasks/core/skips.py)."""
    if skip := too_few_rows(f"dataset {dataset}", rows, batch):
        raise ValueError(f"{skip.reason}: too few to train on")


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> str:
    """The JSONL file a TrainJob's `rows` names."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def train(spec: TrainJob) -> dict[str, Any]:
    """The training itself, in this process (the child's body; tests may call it directly)."""
    import datasets

    from mathfactory.tasks.models import tiny

    rows, out = _rows(spec), Path(spec.out_dir)
    if spec.trainer == "scratch":
        from mathfactory.tasks.policy import PolicyConfig, train_scratch

        return train_scratch(PolicyConfig.model_validate(spec.args), rows, out, spec.init)
    if spec.trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {spec.trainer!r}; valid: {', '.join(TRAINERS)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig

    check_model_dir(spec.init)
    model = from_pretrained(AutoModelForCausalLM, spec.init)
    tokenizer = from_pretrained(AutoTokenizer, spec.init)
    datasets.disable_progress_bars()
    data = datasets.Dataset.from_list(rows)
    if spec.trainer == "sft":
        args = SFTConfig(**{**tiny.trl_defaults(out), **spec.args})
        check_size(spec.dataset, len(rows), args.per_device_train_batch_size * args.gradient_accumulation_steps)
        trainer = tiny.LengthBatchedSFT(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    else:
        # DPO batches hold chosen and rejected sides: random batches (the length sampler reads `input_ids`).
        args = DPOConfig(**{**tiny.trl_defaults(out), "train_sampling_strategy": "random", **spec.args})
        check_size(spec.dataset, len(rows), args.per_device_train_batch_size * args.gradient_accumulation_steps)
        # No ref_model: the starting model is the reference, and with precompute_ref_log_probs its log-probs are
        # computed once, before the first step.
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    metrics = {"train_rows": len(rows), **tiny.fit(trainer, tokenizer, out)}
    history = trainer.state.log_history
    for key in ("rewards/margins", "rewards/accuracies"):  # DPO: how far chosen pulls ahead of rejected, per log
        if any(key in e for e in history):
            metrics[key.replace("/", "_")] = [e[key] for e in history if key in e]
    return metrics


def main(argv: list[str]) -> None:
    (spec_path,) = argv
    spec = TrainJob(**json.loads(Path(spec_path).read_text()))
    metrics = train(spec)
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(spec.out_dir) / METRICS).write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1:])
