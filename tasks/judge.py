"""(gold answer, completion) pairs -> Grades: the numeric fast path in-process, LaTeX in killable math-verify workers."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from multiprocessing.connection import Connection, wait

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core.calculator import check_annotations
from mathfactory.tasks.core.grading import Grade, extract_answer, grade_fast

STARTUP_TIMEOUT_S = 60.0  # spawn + `import math_verify` takes ~0.5 s; this only catches a broken environment
STARTUP_FAILURES = 3
MEMORY_HEADROOM = 2 << 30  # a worker may grow this far past its startup size before MemoryError
# Compared once per worker before it takes items: the LaTeX parser builds its tables lazily, which made a
# cold worker's first MATH items ~25 % slower (and this cost must not count against an item's timeout).
WARM_UP = ("\\frac{1}{2}", "\\sqrt{2}+\\pi", "(1, 2)", "[0, 1)", "\\{1, 2\\}", "x^2 - 3x + 2", "\\text{(A)}",
           "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "2 \\cdot 10^{3}", "y = 2x + 1", "\\infty", "10\\%",
           "\\dfrac{\\sqrt{3}}{2}", "45^\\circ", "3i")

# --- worker process ------------------------------------------------------------------------------------------


def _limit_memory() -> None:
    """Cap the address space so `9^{9^{9}}` fails with MemoryError instead of taking the machine down."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, resource.RLIM_INFINITY))
    except (ImportError, OSError, ValueError):  # not Linux: run without the cap
        pass


def _is_math(parsed: list) -> bool:
    from sympy import Basic, MatrixBase

    return any(isinstance(x, Basic | MatrixBase) for x in parsed)


def _compare(gold: str, predicted: str) -> tuple[bool, str]:
    from math_verify import parse, verify

    # Timeouts are None: math-verify's own are signal.alarm, which the parent's kill replaces. `$...$`, not
    # `\boxed{}`: when deep nesting defeats the LaTeX parser, boxed extraction falls back to an inner fragment
    # (a `\frac` nested 150 deep "parses" as 1/2), while `$...$` falls back to the raw string, caught below.
    try:
        g = parse(f"${gold}$", parsing_timeout=None)
        p = parse(f"${predicted}$", parsing_timeout=None)
        if not g or not p:
            return False, "unparseable"
        if verify(g, p, timeout_seconds=None):
            return True, "correct"
        # math-verify falls back to the raw string when LaTeX parsing fails (deep nesting, garbage); a string
        # that did not match a gold expression was never read as math.
        return False, "unparseable" if _is_math(g) and not _is_math(p) else "wrong"
    except Exception:  # RecursionError, MemoryError, anything SymPy throws: the answer could not be read
        return False, "unparseable"


def _serve(conn: Connection) -> None:
    """Worker loop: warm math-verify, say ready, then answer (gold, predicted) -> (correct, reason) until None."""
    _limit_memory()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings, per call
    for expr in WARM_UP:
        _compare(expr, expr)
    conn.send("ready")
    while (item := conn.recv()) is not None:
        conn.send(_compare(*item))


# --- pool ---------------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="mathfactory-judge")
        self.proc.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False
        self.item: int | None = None  # index of the pair in flight
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class Grading(BaseModel):
    """How answers are graded, the same in every stage that grades (verdicts, credit's continuations, evaluation,
    the synthesis gates): a run carries one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(5.0, gt=0, description="Hard limit per LaTeX comparison; the item gets `timeout`.")
    workers: int = Field(2, ge=1, description="Worker processes for the LaTeX (math-verify) path.")

    def judge(self) -> Judge:
        return Judge(timeout_s=self.timeout_s, workers=self.workers)


class Judge:
    """Grades completions against gold answers; a context manager that owns its worker processes.

    Plain numbers are graded in the calling thread. Anything else goes to math-verify in worker processes,
    started on the first such item; an item that overruns `timeout_s` gets its worker killed and replaced
    and the reason `timeout`. Safe to call from any thread (calls are serialised).
    """

    def __init__(self, timeout_s: float = 5.0, workers: int = 2, max_answer_chars: int = 2000):
        if timeout_s <= 0 or workers < 1 or max_answer_chars < 1:
            raise ValueError("timeout_s, workers and max_answer_chars must be positive")
        self.timeout_s = timeout_s
        self.n_workers = workers
        self.max_answer_chars = max_answer_chars
        self.started = 0  # worker processes started so far (replacements included)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        # forkserver: `fork` from a threaded process (Prefect runs tasks in threads) can deadlock the child.
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(method)
        # A Judge dropped without close() still takes its workers with it.
        self._finalizer = weakref.finalize(self, _stop, self._workers)

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def grade(self, gold: str, completion: str) -> Grade:
        return self.grade_many([(gold, completion)])[0]

    def grade_many(self, pairs: Iterable[tuple[str, str]]) -> list[Grade]:
        """Grades in input order; never raises for a bad item (timeouts, crashes and garbage get a reason)."""
        grades: list[Grade | None] = []
        latex: deque[tuple[int, str, str, int]] = deque()  # (index, gold, predicted, calc_errors)
        for i, (gold, completion) in enumerate(pairs):
            fast = grade_fast(gold, completion, self.max_answer_chars)
            grades.append(fast)
            if fast is None:
                predicted = extract_answer(completion)
                assert predicted is not None  # grade_fast answers no_answer itself
                latex.append((i, gold, predicted, check_annotations(completion)[1]))
        if latex:
            with self._lock:
                try:
                    self._run(latex, grades)
                except BaseException:  # e.g. KeyboardInterrupt: a worker's late answer must not reach a later call
                    _stop(self._workers)
                    raise
        return grades  # type: ignore[return-value]  # every slot is filled by now

    def _run(self, todo: deque[tuple[int, str, str, int]], grades: list[Grade | None]) -> None:
        meta = {i: (predicted, calc) for i, _, predicted, calc in todo}

        def finish(i: int, correct: bool, reason: str) -> None:
            predicted, calc = meta[i]
            grades[i] = Grade(correct, reason, predicted, calc)

        while len(self._workers) < self.n_workers:
            self._spawn()
        failures = 0
        while todo or any(w.item is not None for w in self._workers):
            for w in self._workers:
                if w.ready and w.item is None and todo:
                    i, gold, predicted, _ = todo.popleft()
                    try:
                        w.conn.send((gold, predicted))
                    except OSError:  # died while idle: requeue the item, the crash check replaces it
                        todo.appendleft((i, gold, predicted, meta[i][1]))
                        continue
                    w.item, w.deadline = i, time.monotonic() + self.timeout_s
            now = time.monotonic()
            deadlines = [w.deadline if w.ready else w.started + STARTUP_TIMEOUT_S for w in self._workers
                         if w.item is not None or not w.ready]
            waitables = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
            wait(waitables, timeout=max(0.0, min(deadlines, default=now + 1.0) - now))
            for k, w in enumerate(self._workers):
                healthy = True
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if msg == "ready":
                            w.ready, failures = True, 0
                        elif w.item is not None:
                            finish(w.item, *msg)
                            w.item = None
                except (EOFError, OSError):
                    healthy = False
                healthy = healthy and w.proc.is_alive()
                now = time.monotonic()
                if w.item is not None and now > w.deadline:
                    finish(w.item, False, "timeout")
                elif w.item is not None and not healthy:
                    finish(w.item, False, "unparseable")  # e.g. a C-level stack overflow in the parser
                elif healthy and (w.ready or now < w.started + STARTUP_TIMEOUT_S):
                    continue
                elif not w.ready:
                    failures += 1
                    if failures >= STARTUP_FAILURES:
                        raise RuntimeError(f"judge workers failed to start {failures} times in a row")
                w.kill()
                self._workers[k] = self._spawn(append=False)

    def _spawn(self, append: bool = True) -> _Worker:
        w = _Worker(self._ctx)
        self.started += 1
        if append:
            self._workers.append(w)
        return w

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def close(self) -> None:
        """Stop the workers: a polite None, then a kill for any that do not exit at once."""
        with self._lock:
            _stop(self._workers)


def _stop(workers: list[_Worker]) -> None:
    for w in workers:
        with contextlib.suppress(OSError):
            w.conn.send(None)
    for w in workers:
        w.proc.join(1)
        w.kill()
    workers.clear()
