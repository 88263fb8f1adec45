"""`mathfactory sample | credit | pairs` on a user's own file of real GSM8K questions (../shared/data), the policy a
ScriptedTeacher served over HTTP on 127.0.0.1: it continues a prefix with the reference's remaining lines, so Q is 1
up to the step where a wrong completion slips and 0 from there, and the pit must land on that step."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from engines.openai_app import Faults, Record, Server, make_app
from teacher import _RESULT, ScriptedTeacher, wrong_completion
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.tasks.core import formatting

cli = CliRunner(env={"COLUMNS": "400"})
MODEL = "policy-7b"
QUESTIONS = 4


def gsm8k_rows(shared_data, k: int) -> list[dict]:
    """The first k GSM8K test problems the scripted policy can slip anywhere in: 3+ step lines, each with a
    calculator annotation followed by its plain result, and a whole-number answer."""
    rows = []
    for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        *steps, final = row["answer"].splitlines()
        if len(steps) >= 3 and all(_RESULT.search(s) for s in steps) and re.fullmatch(r"#### \d+", final):
            rows.append(row)
        if len(rows) == k:
            return rows
    raise AssertionError("too few usable GSM8K rows")


@pytest.fixture(scope="module")
def problems(shared_data):
    return gsm8k_rows(shared_data, QUESTIONS)


@pytest.fixture(scope="module")
def policy(problems):
    """(base URL, request record) of the exact scripted policy on loopback."""
    record = Record()
    teacher = ScriptedTeacher({p["question"]: p["answer"] for p in problems})
    server = Server(make_app(teacher, MODEL, Faults(), record, max_model_len=4096)).start()
    yield f"{server.url}/v1", record
    server.stop()


def user_file(tmp_path, problems) -> tuple[str, dict[int, int | None]]:
    """A user's JSONL of (question, gold, output, solution): per question the reference and completions slipped at
    step 1, the middle and the last; a malformed line, a row without an output, an empty output. Returns the
    file and input row -> the step its output slips at (None: correct)."""
    lines, slips = [], {}
    for p in problems:
        n = len(p["answer"].splitlines()) - 1
        gold = p["answer"].rsplit("#### ", 1)[1]
        for slip in (None, 1, (n + 1) // 2, n):
            output = formatting.completion(p["answer"]) if slip is None else wrong_completion(p["answer"], slip)
            slips[len(lines)] = slip
            lines.append(json.dumps({"question": p["question"], "gold": gold, "output": output,
                                     "solution": p["answer"]}))
    lines.append('{"question": "cut off", "gold": ')
    lines.append(json.dumps({"question": problems[0]["question"], "gold": "1"}))
    lines.append(json.dumps({"question": problems[1]["question"], "gold": "1", "output": "  "}))
    path = tmp_path / "outputs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), slips


def jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def invoke(*args: str):
    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_credit_pits_land_where_the_policy_stops_succeeding_and_a_rerun_is_answered_from_the_cache(
        tmp_path, problems, policy):
    url, record = policy
    src, slips = user_file(tmp_path, problems)
    cache, out = str(tmp_path / "cache"), str(tmp_path / "credit.parquet")
    args = ["credit", src, "--question", "question", "--gold", "gold", "--completion", "output", "--policy", url,
            "--model", MODEL, "--out", out, "--strategy", "binary", "--m", "4", "--cache", cache]
    before = record.received
    first = invoke(*args)
    asked = record.received - before
    assert asked > 0

    n = len(slips)  # rows n, n+1, n+2 (lines n+1..n+3) are the bad ones
    assert f"{src}:{n + 1}: malformed JSON" in first.output
    assert f"{src}:{n + 2}: no usable output column" in first.output
    assert f"{src}:{n + 3}: not credited: no_steps (empty completion)" in first.output
    rows = pq.read_table(out).to_pylist()
    assert {r["steps"] for r in rows} == {"lines"}
    by_row: dict[int, list[dict]] = {}
    for r in rows:
        by_row.setdefault(r["row"], []).append(r)
    assert set(by_row) == set(slips)  # every good input row credited, joined back by its 0-based index
    for i, slip in slips.items():
        credited = by_row[i]
        assert all(r["solution"] == credited[0]["solution"] for r in credited)  # input columns kept
        pits = [r["step_index"] for r in credited if r["is_pit"]]
        assert pits == ([] if slip is None else [slip]), (i, slip, credited)
        assert all(r["correct"] == (slip is None) for r in credited)
        if slip is not None:  # the step before the slip still reached the answer, the slipped one never does
            q = {r["step_index"]: r for r in credited}
            last = max(q)  # step n is the verdict itself: no continuations
            assert q[slip]["n_correct"] == 0 and q[slip]["n_continuations"] == (4 if slip < last else 0)
            assert slip - 1 not in q or q[slip - 1]["n_correct"] > 0

    again = invoke(*args)
    assert record.received == before + asked  # not one new HTTP request
    assert f"{asked} sent" not in again.output and "0 sent" in again.output
    assert pq.read_table(out).to_pylist() == rows


def test_pairs_from_the_credit_file_in_trls_columns(tmp_path, problems, policy):
    url, _ = policy
    src, slips = user_file(tmp_path, problems)
    credit = str(tmp_path / "credit.jsonl")
    invoke("credit", src, "--question", "question", "--gold", "gold", "--completion", "output", "--policy", url,
           "--model", MODEL, "--out", credit, "--strategy", "scan", "--m", "2", "--cache", str(tmp_path / "c"))
    credit_rows = jsonl(credit)
    row_of = {r["rollout_id"]: r["row"] for r in credit_rows}  # the credit's join key
    with open(credit, "a") as f:
        f.write('{"rollout_id": "x"}\n')  # a row no credit command wrote
    inputs = [json.loads(line) for line in Path(src).read_text().splitlines()[: len(slips)]]

    out = str(tmp_path / "step_cut.jsonl")
    result = invoke("pairs", credit, "--kind", "step_cut", "--reference", "solution", "--out", out)
    assert f"{credit}:{len(credit_rows) + 1}: not a credit row: no problem_id" in result.output
    pairs = jsonl(out)
    assert sorted(row_of[p["rejected_rollout_id"]] for p in pairs) == [i for i, s in slips.items() if s]
    for pair in pairs:
        i = row_of[pair["rejected_rollout_id"]]
        row, slip = inputs[i], slips[i]
        assert pair["prompt"] == formatting.prompt(row["question"]) and pair["pit_index"] == slip
        lines = row["output"].splitlines(keepends=True)  # the last step keeps the `####` line
        assert pair["rejected"] == "".join(lines[: slip if slip < len(lines) - 1 else None])  # cut after the slip
        assert pair["chosen"] == formatting.completion(row["solution"])

    out = str(tmp_path / "stepwise.parquet")
    invoke("pairs", credit, "--kind", "stepwise", "--out", out)
    labelled = pq.read_table(out).to_pylist()
    assert sorted(row_of[e["rollout_id"]] for e in labelled) == sorted(slips)
    for example in labelled:
        slip = slips[row_of[example["rollout_id"]]]
        steps = len(example["completions"])
        assert example["labels"] == [slip is None or s < slip for s in range(1, steps + 1)]

    out = str(tmp_path / "rft.jsonl")
    invoke("pairs", credit, "--kind", "rft", "--out", out)
    rft = jsonl(out)
    assert sorted(row_of[r["rollout_id"]] for r in rft) == [i for i, s in slips.items() if s is None]
    assert all(r["completion"] == inputs[row_of[r["rollout_id"]]]["output"] for r in rft)


def test_pairs_rechoose_the_pit_by_the_other_rule_from_linear_credit(tmp_path, problems, policy):
    url, _ = policy
    src, slips = user_file(tmp_path, problems)
    credit = {}
    for strategy in ("linear", "scan"):
        credit[strategy] = str(tmp_path / f"{strategy}.jsonl")
        invoke("credit", src, "--question", "question", "--gold", "gold", "--completion", "output", "--policy", url,
               "--model", MODEL, "--out", credit[strategy], "--strategy", strategy, "--m", "2",
               "--cache", str(tmp_path / "c"))
    row_of = {r["rollout_id"]: r["row"] for r in jsonl(credit["linear"])}
    for pit in ("max_drop", "first_zero"):  # Q is 1 before the slip and 0 from it: both rules pick the slip
        out = str(tmp_path / f"{pit}.jsonl")
        invoke("pairs", credit["linear"], "--kind", "step_cut", "--pit", pit, "--out", out)
        assert {row_of[p["rejected_rollout_id"]]: p["pit_index"] for p in jsonl(out)} == {
            i: s for i, s in slips.items() if s}
    out = str(tmp_path / "refused.jsonl")
    result = cli.invoke(app, ["pairs", credit["scan"], "--kind", "step_cut", "--pit", "max_drop", "--out", out])
    assert result.exit_code == 2 and "max_drop needs linear credit" in result.output and not Path(out).exists()


def test_sample_grades_each_completion_and_resumes_from_the_cache(tmp_path, problems):
    noisy = ScriptedTeacher({p["question"]: p["answer"] for p in problems}, error_rate=0.3)
    record = Record()
    server = Server(make_app(noisy, MODEL, Faults(), record, max_model_len=4096)).start()
    try:
        src = tmp_path / "questions.parquet"
        pq.write_table(pa.Table.from_pylist(
            [{"q": p["question"], "a": int(p["answer"].rsplit("#### ", 1)[1])} for p in problems]), src)
        out = str(tmp_path / "samples.jsonl")
        args = ["sample", str(src), "--question", "q", "--gold", "a", "--policy", server.url, "--model", MODEL,
                "--n", "3", "--out", out, "--cache", str(tmp_path / "cache")]
        invoke(*args)
        assert record.received == len(problems)  # one request per question, n completions each
        samples = jsonl(out)
        assert [(s["row"], s["sample_index"]) for s in samples] == [(i, k) for i in range(len(problems))
                                                                   for k in range(3)]
        reference = {p["question"]: formatting.completion(p["answer"]) for p in problems}
        # The noisy policy is right exactly when it slipped nowhere.
        assert [s["correct"] for s in samples] == [s["completion"] == reference[s["q"]] for s in samples]
        assert 0 < sum(s["correct"] for s in samples) < len(samples)
        invoke(*args)
        assert record.received == len(problems)
        assert jsonl(out) == samples

        credit = str(tmp_path / "credit.jsonl")  # the samples, credited as they are: `row` indexes them
        invoke("credit", out, "--question", "q", "--gold", "a", "--completion", "completion", "--policy",
               server.url, "--model", MODEL, "--m", "2", "--out", credit, "--cache", str(tmp_path / "cache"))
        pits: dict[int, int] = {}
        for r in jsonl(credit):
            pits[r["row"]] = pits.get(r["row"], 0) + r["is_pit"]
        assert pits == {i: int(not s["correct"]) for i, s in enumerate(samples)}  # one pit per wrong sample
    finally:
        server.stop()


def test_bad_options_are_one_clear_line(tmp_path, problems, policy):
    src, _ = user_file(tmp_path, problems)
    common = ["--question", "question", "--gold", "gold", "--completion", "output", "--out", str(tmp_path / "o.jsonl")]
    result = cli.invoke(app, ["credit", src, *common, "--policy", str(tmp_path / "no-model")])
    assert result.exit_code != 0 and "no-model: no such directory" in result.output
    result = cli.invoke(app, ["credit", src, *common, "--policy", policy[0], "--pit", "max_drop"])
    assert result.exit_code != 0 and "max_drop needs Q at consecutive steps" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_sample_from_a_local_model_directory_is_cached_by_its_files(tmp_path, problems):
    from support import tiny_policy

    model = tiny_policy(tmp_path / "policy")
    src = tmp_path / "questions.jsonl"
    src.write_text("".join(json.dumps({"q": p["question"], "a": p["answer"].rsplit("#### ", 1)[1]}) + "\n"
                           for p in problems[:2]))
    out = str(tmp_path / "samples.parquet")
    args = ["sample", str(src), "--question", "q", "--gold", "a", "--policy", str(model), "--n", "2",
            "--max-new-tokens", "24", "--out", out, "--cache", str(tmp_path / "cache")]
    assert "policy requests: 2 sent, 0 answered" in invoke(*args).output
    samples = pq.read_table(out).to_pylist()
    assert [(s["row"], s["sample_index"]) for s in samples] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(s["n_tokens"] > 0 for s in samples)
    assert "policy requests: 0 sent, 2 answered" in invoke(*args).output
    assert pq.read_table(out).to_pylist() == samples
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")  # a model saved anew
    assert "policy requests: 2 sent, 0 answered" in invoke(*args).output


def test_a_request_the_server_refuses_costs_only_its_own_row(tmp_path, problems, policy):
    """A question too long for the served model's context (HTTP 400, as vLLM answers) is reported with its row;
    every other row is sampled and credited."""
    url, _ = policy
    src, slips = user_file(tmp_path, problems[:2])
    long = {"question": problems[0]["question"] + " Think." * 5000, "gold": "1",
            "output": wrong_completion(problems[0]["answer"], 2), "solution": problems[0]["answer"]}
    with open(src, "a") as f:
        f.write(json.dumps(long) + "\n")
    line = len(Path(src).read_text().splitlines())
    out = str(tmp_path / "credit.jsonl")
    result = invoke("credit", src, "--question", "question", "--gold", "gold", "--completion", "output",
                    "--policy", url, "--model", MODEL, "--out", out, "--m", "2", "--cache", str(tmp_path / "c"))
    assert f"{src}:{line}: refused by the policy's server: HTTP 400: " in result.output
    assert "prompt tokens > 4096" in result.output
    credited = jsonl(out)
    assert {r["row"] for r in credited} == set(slips)
    assert sorted((r["row"], r["step_index"]) for r in credited if r["is_pit"]) == sorted(
        (i, s) for i, s in slips.items() if s)

    result = invoke("sample", src, "--question", "question", "--gold", "gold", "--policy", url, "--model", MODEL,
                    "--n", "2", "--out", out, "--cache", str(tmp_path / "c"))
    assert f"{src}:{line}: refused by the policy's server: HTTP 400: " in result.output
    n = len(slips)  # row n is malformed JSON, n+1 and n+2 lack an output but have a question; n+3 is the long one
    assert sorted({r["row"] for r in jsonl(out)}) == [*slips, n + 1, n + 2]


def test_latex_completions_split_math_style_and_say_so(tmp_path, shared_data, policy):
    """A MATH500 solution credited against a policy that cannot solve it: steps are its sentences (the split
    stated in `steps`), and Q falls to 0 at the first step."""
    from mathfactory.tasks.core.steps import split_steps

    row = json.loads((shared_data / "math500" / "test.jsonl").read_text().splitlines()[1])
    src = tmp_path / "math.jsonl"
    src.write_text(json.dumps({"problem": row["problem"], "answer": row["answer"], "solution": row["solution"]}))
    out = str(tmp_path / "credit.jsonl")
    invoke("credit", str(src), "--question", "problem", "--gold", "answer", "--completion", "solution",
           "--policy", policy[0], "--model", MODEL, "--out", out, "--m", "2", "--cache", str(tmp_path / "c"),
           "--timeout", "60")  # LaTeX grading: a loaded machine must not turn the right answer into a timeout
    credited = jsonl(out)
    steps = split_steps(row["solution"], "math")
    assert len(steps) > 1 and {r["steps"] for r in credited} == {"math"}
    assert all(r["step_text"] == steps[r["step_index"] - 1].text for r in credited if r["step_index"])
    assert [r["step_index"] for r in credited] == list(range(len(steps) + 1))  # a right solution: every step
    assert all(r["correct"] for r in credited) and credited[1]["q"] == 0.0
