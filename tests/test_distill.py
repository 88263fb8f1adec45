"""Stage kd_round1 with the teacher served over HTTP on 127.0.0.1 (the toy teacher behind an OpenAI-compatible
server, as `vllm serve` or a hosted GPT-4 would be): rows, failures with reasons, cost, and the cache across runs."""

from contextlib import ExitStack

import pytest
from engines.openai_app import Faults, Record, Server, make_app

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.records import TeacherCall
from mathfactory.tasks.distill import SPECS, DistillConfig, TeacherConfig, load_templates
from mathfactory.tasks.engines import OpenAIOptions
from mathfactory.tasks.engines.toy_teacher import ToyTeacher
from mathfactory.tasks.seeds import SEEDS, SeedsConfig
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.synthesis import SynthesisConfig

MODEL = "toy-teacher-served"
DISTILL = DistillConfig(stages=["grade_school", "college"], round1_seeds=6)


@pytest.fixture
def serve():
    with ExitStack() as stack:
        def _serve(**faults) -> tuple[Server, Record]:
            record = Record()
            app = make_app(ToyTeacher(load_templates("synthesis")), MODEL, Faults(**faults), record,
                           max_model_len=4096)
            server = Server(app).start()
            stack.callback(server.stop)
            return server, record

        yield _serve


def teacher_config(server: Server, **kw) -> TeacherConfig:
    engine = OpenAIOptions(base_url=server.url, model=MODEL, timeout_s=5, max_retries=kw.pop("max_retries", 2))
    return TeacherConfig(engine=engine, **kw)


def run_round(lake: str, run: str, teacher: TeacherConfig) -> list[TeacherCall]:
    build(SEEDS, SeedsConfig(n=12), Run(lake=lake, run_id=run))
    build(SPECS["kd_round1"], SynthesisConfig(distill=DISTILL, teacher=teacher), Run(lake=lake, run_id=run))
    return list(Lake(lake).read(run, "kd_round1", TeacherCall))


def test_a_served_teacher_writes_the_distillation_set_and_a_second_run_pays_nothing(serve, tmp_path):
    server, record = serve(fail_first=3, fail_status=429)  # rate-limited at first: retried, nothing lost
    lake, cfg = str(tmp_path), teacher_config(server)
    rows = run_round(lake, "run-a", cfg)
    assert len(rows) == 6 * 2 and all(r.ok and not r.cached for r in rows)
    assert all(isinstance(synthesis.parse(r.completion), synthesis.Parsed) for r in rows)
    assert {r.level for r in rows} == {"grade_school", "college"}
    cost = Lake(lake).marker("run-a", "kd_round1")["metrics"]
    assert cost["teacher_calls"] == 12 and cost["cached"] == 0 and record.received == 12 + 3
    assert cost["prompt_tokens"] == record.prompt_tokens and cost["completion_tokens"] == record.completion_tokens
    # Another run with the same requests (another date, say) is answered from the lake's request cache.
    again = run_round(lake, "run-b", cfg)
    assert record.received == 15 and all(r.cached for r in again)
    assert [r.completion for r in again] == [r.completion for r in rows]
    assert Lake(lake).marker("run-b", "kd_round1")["metrics"]["teacher_calls"] == 0


def test_requests_that_keep_failing_are_rows_with_their_reason(serve, tmp_path):
    server, _ = serve(fail_first=4, fail_status=500)
    rows = run_round(str(tmp_path), "run", teacher_config(server, max_retries=0, attempts=1))
    failed = [r for r in rows if not r.ok]
    assert len(failed) == 4 and len(rows) == 12
    assert all(r.completion is None and "HTTP 500" in r.reason for r in failed)
    assert Lake(str(tmp_path)).marker("run", "kd_round1")["metrics"]["failed"] == 4


def test_garbage_is_retried_and_a_teacher_that_only_fails_stops_the_stage(serve, tmp_path):
    server, _ = serve(garbage_first=2)
    rows = run_round(str(tmp_path / "a"), "run", teacher_config(server))
    assert all(r.ok for r in rows) and sum(r.attempts for r in rows) == 12 + 2
    server, _ = serve(fail_first=10**6, fail_status=503)
    with pytest.raises(RuntimeError, match=r"all 12 teacher requests failed, e.g. .*HTTP 503"):
        run_round(str(tmp_path / "b"), "run", teacher_config(server, max_retries=0, attempts=1))
