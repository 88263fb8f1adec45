"""Crash-resume at random points (issue 17, item 1). The pipeline's whole process tree (the flow's process, its trainer
and grader children) is SIGKILLed at moments a seeded RNG draws over a measured uninterrupted run's stage timeline,
again and again on one lake, each kill followed by a rerun, until the run completes. Then the resumed lake's
datasets equal the uninterrupted run's (rows and a content hash of each), and a watcher that listed the lake the whole
time, reading every part file and marker as a user would, never saw a partial part file or a marker without its parts.

Each kill is anchored on what the attempt does, not on the clock of a process still importing: a stage's work from
the moment it becomes the run's first unfinished stage, a training from its trainer process's start, a commit from
its last shard landing. The delay is a random share of that phase's length in the uninterrupted run. A failing chain
replays with CRASH_SEED=<the seed it printed>.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
from support import REPO, TINY_PRESET

from mathfactory.flows.config import load_preset
from mathfactory.tasks.pairs import DATASETS
from mathfactory.tasks.storage import MARKER
from mathfactory.tasks.trainer import check_model_dir

# ~15 attempts of a few seconds' start-up each, after one uninterrupted run.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

# The tiny preset plus one TRL training (per-step DPO on its 2 pairs), so a kill can land in a TRL trainer too.
SETS = ['train.methods=["step_dpo"]', "train.trl_args.step_dpo.per_device_train_batch_size=2",
        "train.trl_args.step_dpo.max_steps=2"]
SET_NAMES = list(DATASETS)  # the training sets, written one after another
ORDER = ["problems", "policy", "rollouts", "verdicts", "credit", *SET_NAMES, "train_step_dpo", "eval_sft",
         "eval_step_dpo"]
MODELS = ("policy", "train_step_dpo")
SHARDS = {"rollouts": 2, "verdicts": 2, "credit": 2, "eval_sft": 2, "eval_step_dpo": 2}
# Where the kills go: (stage, phase); "sets" is the nine training sets, written one after another in well under a second.
PLAN = [("problems", "work"), ("policy", "training"), ("policy", "commit"), ("rollouts", "work"),
        ("rollouts", "commit"), ("verdicts", "work"), ("verdicts", "commit"), ("credit", "work"), ("credit", "commit"),
        ("sets", "work"), ("train_step_dpo", "training"), ("train_step_dpo", "commit"), ("eval_sft", "work"),
        ("eval_sft", "commit"), ("eval_step_dpo", "work")]
POLL_S = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL to a process and every descendant at once, as a node dying does; how many processes it killed."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the session the run was started in
    for p in tree:  # and any child that left it
        with suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(30)
    psutil.wait_procs(tree, timeout=30)
    return len(tree)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on loopback: every attempt talks to it, so none pays for a temporary server of its own."""
    tmp = tmp_path_factory.mktemp("crash-server")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp / "home"), PREFECT_API_URL=url, DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", TOKENIZERS_PARALLELISM="false", COLUMNS="200")
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                 url.split(":")[2].split("/")[0]], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the Prefect server was not healthy after 300 s"
                with suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.5)
            yield env
        finally:
            kill_tree(proc)


# -- what a reader sees ----------------------------------------------------------------------------------------


def read_part(path: Path) -> list[dict]:
    """A part file's rows, read whole; raises on a partial file (a footer that does not match its row groups)."""
    file = pq.ParquetFile(path)
    rows = file.read().to_pylist()
    if len(rows) != file.metadata.num_rows:
        raise ValueError(f"{path}: footer says {file.metadata.num_rows} rows, read {len(rows)}")
    return rows


def marker_faults(stage_dir: Path) -> list[str]:
    """What is wrong with a committed stage as a reader finds it: a part its marker names that is missing or
    incomplete, rows that do not add up, a model directory that is not whole."""
    marker = json.loads((stage_dir / MARKER).read_text())
    faults, rows = [], 0
    for part in marker["parts"]:
        try:
            rows += len(read_part(stage_dir / part))
        except Exception as e:  # noqa: BLE001 - any failure to read is what we look for
            faults.append(f"{stage_dir.name}: marker names {part}, unreadable: {type(e).__name__}: {e}")
    if rows != marker["rows"]:
        faults.append(f"{stage_dir.name}: marker says {marker['rows']} rows, its parts hold {rows}")
    if marker["record"] is None and "pretrained" not in marker.get("metrics", {}):
        try:
            check_model_dir(stage_dir / "model")
        except ValueError as e:
            faults.append(f"{stage_dir.name}: marker written, model not whole: {e}")
    return faults


def lake_faults(run_dir: Path) -> list[str]:
    """Every visible part file read whole, every marker checked against its parts."""
    faults = []
    for part in run_dir.glob("**/part-*.parquet"):
        try:
            read_part(part)
        except Exception as e:  # noqa: BLE001
            faults.append(f"{part}: a visible part file does not read: {type(e).__name__}: {e}")
    for marker in run_dir.glob(f"*/{MARKER}"):
        faults += marker_faults(marker.parent)
    return faults


@dataclass
class Watcher:
    """Lists the lake every POLL_S from a thread, as a reader would: reads each part file and checks each marker the
    moment it appears, and notes when each file appeared and when trainer processes ran (the timeline kills draw
    from)."""

    run_dir: Path
    seen: dict[str, float] = field(default_factory=dict)  # path under the run -> when first listed
    trainers: list[list] = field(default_factory=list)  # [stage, started, ended or inf] of each trainer process
    faults: list[str] = field(default_factory=list)
    reads: int = 0  # files a reader opened
    attempt: Attempt | None = None  # the attempt running now
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Watcher:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        training = False
        while not self._stop.is_set():
            now = time.monotonic()
            for path in self.run_dir.glob("**/*") if self.run_dir.exists() else ():
                key = path.relative_to(self.run_dir).as_posix()
                if key in self.seen or not path.is_file():
                    continue
                self.seen[key] = now
                try:
                    if path.name.startswith("part-") and path.suffix == ".parquet":
                        read_part(path)
                        self.reads += 1
                    elif path.name == MARKER:
                        self.faults += marker_faults(path.parent)
                        self.reads += 1
                except FileNotFoundError:
                    pass  # a model directory an attempt replaced as we looked: not a file a marker named
                except Exception as e:  # noqa: BLE001
                    self.faults.append(f"{key}: {type(e).__name__}: {e}")
            if self.attempt is not None:
                self.attempt.flow_began()
            now_training = self._trainer_running()
            if now_training and not training:
                self.trainers.append([unfinished(self, ORDER), now, float("inf")])
            elif training and not now_training:
                self.trainers[-1][2] = now
            training = now_training
            time.sleep(POLL_S)

    def _trainer_running(self) -> bool:
        proc = self.attempt and self.attempt.proc
        if proc is None or proc.poll() is not None:
            return False
        with suppress(psutil.Error):
            return any("mathfactory.tasks.trainer" in " ".join(p.cmdline())
                       for p in psutil.Process(proc.pid).children(recursive=True))
        return False

    def when(self, stage: str, name: str = MARKER) -> float | None:
        return self.seen.get(f"{stage}/{name}")

    def trained(self, stage: str, since: float = 0.0) -> tuple[float, float] | None:
        """(start, end or inf) of the last trainer process for `stage` that started after `since`."""
        runs = [(t0, t1) for s, t0, t1 in self.trainers if s == stage and t0 >= since]
        return runs[-1] if runs else None

    def landed(self, stage: str) -> float | None:
        """When the last of a sharded stage's parts appeared."""
        times = [self.when(stage, f"part-{s:05d}.parquet") for s in range(SHARDS[stage])]
        return None if None in times else max(times)


# -- one attempt ----------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """`mathfactory run` as a user runs it, in a session of its own; `began` is when its flow run began."""

    proc: subprocess.Popen
    log: Path
    started: float
    began: float | None = None

    def flow_began(self) -> float | None:
        if self.began is None and "Beginning flow run" in self.log.read_text(errors="replace"):
            self.began = time.monotonic()
        return self.began


@pytest.fixture
def launched() -> list[subprocess.Popen]:
    """The attempts started; one still running when the test ends (failed, timed out) is killed with its tree."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            kill_tree(proc)


def start(env: dict, lake: Path, log: Path, launched: list[subprocess.Popen]) -> Attempt:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mathfactory.flows.cli", "run", "--preset", str(TINY_PRESET),
                                 "--lake", str(lake), *(a for s in SETS for a in ("--set", s))],
                                env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    launched.append(proc)
    return Attempt(proc, log, time.monotonic())


def unfinished(w: Watcher, stages: list[str]) -> str | None:
    return next((s for s in stages if w.when(s) is None), None)


def previous(stage: str) -> str | None:
    i = ORDER.index(SET_NAMES[0] if stage == "sets" else stage)
    return ORDER[i - 1] if i else None


@dataclass
class Timeline:
    """The uninterrupted run's phases, in seconds: each stage's work (from the moment it is the first unfinished
    stage to its last part, or to its marker), its commit (last part, or the trainer's exit, to its marker), and
    each training (the trainer process's life)."""

    work: dict[str, float]
    commit: dict[str, float]
    training: dict[str, float]
    total: float

    @classmethod
    def measure(cls, w: Watcher, a: Attempt, ended: float) -> Timeline:
        begins = {s: max(a.began, w.when(previous(s)) or a.began) for s in [*ORDER, "sets"]}
        training = {s: w.trained(s)[1] - w.trained(s)[0] for s in MODELS}
        work, commit = {}, {}
        for s in ORDER:
            done = w.landed(s) if s in SHARDS else w.trained(s)[1] if s in MODELS else w.when(s)
            work[s], commit[s] = done - begins[s], w.when(s) - done
        work["sets"] = w.when(SET_NAMES[-1]) - begins["sets"]
        return cls(work, commit, training, ended - a.started)

    def length(self, stage: str, phase: str) -> float:
        return getattr(self, phase)[stage]


def anchor(stage: str, phase: str, w: Watcher, a: Attempt) -> float | None:
    """When this attempt entered the phase the kill aims at (None: not yet)."""
    if (began := a.flow_began()) is None:
        return None
    since = lambda t: max(t, began) if t is not None else None  # noqa: E731 - an event before the flow began
    if phase == "work":
        prev = previous(stage)
        return began if prev is None else since(w.when(prev))
    if stage in SHARDS:
        return since(w.landed(stage))
    trained = w.trained(stage, a.started)  # a training (and a model's commit) only this attempt can start
    if trained is None:
        return None
    return trained[0] if phase == "training" else trained[1] if trained[1] != float("inf") else None


def phase_at_kill(w: Watcher, a: Attempt, run_dir: Path, trainer_alive: bool) -> str:
    """Where a kill landed, from the lake as it left it and the trainer processes the attempt ran."""
    stage = unfinished(w, ORDER)
    if stage is None:
        return "after the last commit"
    if stage in MODELS:
        if trainer_alive:
            return f"{stage}: mid-training"
        if (run_dir / stage / "_shards").exists() or (run_dir / stage / "model").exists():
            return f"{stage}: model landing, mid-commit"
        if w.trained(stage, a.started):
            return f"{stage}: trained, before the model landed (commit)"
        return f"{stage}: before training"
    parts = len(list((run_dir / stage).glob("part-*.parquet")))
    if stage in SHARDS and parts == SHARDS[stage]:
        return f"{stage}: all shards landed, mid-commit"
    return f"{stage}: {parts} of {SHARDS.get(stage, 1)} parts landed"


# -- what is compared ------------------------------------------------------------------------------------------


def datasets(run_dir: Path) -> dict[str, tuple[int, str]]:
    """Every committed record stage (and its quarantine): rows and a hash of their content in order."""
    out = {}
    for marker in sorted(run_dir.glob(f"*/{MARKER}")):
        m = json.loads(marker.read_text())
        if m["record"] is None:
            continue
        for where in (marker.parent, marker.parent / "_quarantine"):
            rows = [r for part in sorted(where.glob("part-*.parquet")) for r in read_part(part)]
            digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
            out[where.relative_to(run_dir).as_posix()] = (len(rows), digest)
    return out


def weights(run_dir: Path, stage: str) -> str:
    return hashlib.sha256((run_dir / stage / "model" / "model.safetensors").read_bytes()).hexdigest()[:16]


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_runs_datasets(server, launched, tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.SystemRandom().randrange(10_000)))
    rng = random.Random(seed)
    print(f"\ncrash-resume: CRASH_SEED={seed}")
    run_id = load_preset(str(TINY_PRESET), SETS).run_id()
    env = {**server, "TMPDIR": str(tmp_path / "tmp"), "MATHFACTORY_CACHE": str(tmp_path / "cache")}
    (tmp_path / "tmp").mkdir()

    # The uninterrupted run: the datasets to equal, and the timeline the kills are drawn over.
    ref_dir = tmp_path / "reference" / "runs" / run_id
    with Watcher(ref_dir) as w:
        a = start(env, tmp_path / "reference", tmp_path / "reference.log", launched)
        w.attempt = a
        assert a.proc.wait() == 0, a.log.read_text()[-4000:]
        ended = time.monotonic()
        time.sleep(5 * POLL_S)
    timeline = Timeline.measure(w, a, ended)
    print(f"uninterrupted run {timeline.total:.1f} s; phases (s): "
          + ", ".join(f"{s} {p} {timeline.length(s, p):.2f}" for s, p in PLAN))
    assert w.faults == [], w.faults
    reference = datasets(ref_dir)

    # The same run, killed again and again, each time resumed by the next attempt, until one completes.
    lake, run_dir = tmp_path / "lake", tmp_path / "lake" / "runs" / run_id
    kills, started = [], time.monotonic()
    with Watcher(run_dir) as w:
        for n, (stage, phase) in enumerate(PLAN):
            target = stage if stage != "sets" else SET_NAMES[-1]
            if w.when(target) is not None:
                print(f"kill {n}: {stage} {phase}: already committed by an earlier attempt, no kill")
                continue
            share = rng.uniform(0.05, 0.95)
            delay = share * timeline.length(stage, phase)
            a = start(env, lake, tmp_path / f"attempt-{n}.log", launched)
            w.attempt = a
            while a.proc.poll() is None:
                t0 = anchor(stage, phase, w, a)
                if t0 is not None and time.monotonic() >= t0 + delay:
                    alive = w._trainer_running()
                    at, killed = time.monotonic() - a.started, kill_tree(a.proc)
                    time.sleep(5 * POLL_S)  # the watcher's last look at what the kill left
                    where = phase_at_kill(w, a, run_dir, alive)
                    kills.append(where)
                    print(f"kill {n}: aimed at {stage} {phase}, {share:.2f} of {timeline.length(stage, phase):.2f} s "
                          f"in; SIGKILL to {killed} processes {at:.1f} s after start: {where}")
                    faults = lake_faults(run_dir)
                    assert faults == [], f"after kill {n} (CRASH_SEED={seed}): {faults}"
                    break
                time.sleep(POLL_S / 2)
            else:
                assert a.proc.returncode == 0, a.log.read_text()[-4000:]
                print(f"kill {n}: aimed at {stage} {phase}: the attempt finished first")
        a = start(env, lake, tmp_path / "final.log", launched)
        w.attempt = a
        assert a.proc.wait() == 0, a.log.read_text()[-4000:]
        time.sleep(5 * POLL_S)
    print(f"{len(kills)} kills and {len(kills) + 1} attempts in {time.monotonic() - started:.0f} s; the watcher read "
          f"{w.reads} files")

    assert w.faults == [], f"CRASH_SEED={seed}: a reader saw {w.faults}"
    assert datasets(run_dir) == reference, f"CRASH_SEED={seed}"
    # What the killed attempts left (a trainer's model folder, a half-written part's temporary file) the last
    # attempt removed.
    left = [*(tmp_path / "tmp").glob("mathfactory-*"), *run_dir.glob("**/_tmp-*")]
    assert left == [], f"CRASH_SEED={seed}: left behind by killed attempts: {left}"
    for stage in MODELS:  # a training killed midway is redone whole; here every one is, and lands the same
        print(f"{stage}: weights {'equal' if weights(run_dir, stage) == weights(ref_dir, stage) else 'differ'}")
    # Spread: at least 10 kills, over at least 6 stages, in a training and in a commit.
    assert len(kills) >= 10, kills
    assert len({k.split(":")[0] for k in kills}) >= 6, kills
    assert any("mid-training" in k for k in kills) and any("commit" in k for k in kills), kills

