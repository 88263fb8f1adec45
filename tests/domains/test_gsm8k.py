"""GSM8K loader: the real files load whole; bad rows are quarantined with file:line and reason."""

import json
import re

import pytest

from mathfactory.tasks.core.records import Problem, Quarantined, stable_id
from mathfactory.tasks.domains import gsm8k
from mathfactory.tasks.storage import DataError, write_file_rows

GOOD = {"question": "Ann has 3 pens and buys 4. How many?", "answer": "Ann has 3+4=<<3+4=7>>7 pens.\n#### 7"}


def _split(items):
    problems = [p for p in items if isinstance(p, Problem)]
    quarantined = [q for q in items if isinstance(q, Quarantined)]
    assert len(problems) + len(quarantined) == len(items)
    return problems, quarantined


@pytest.mark.parametrize("split,rows", [("train", 7473), ("test", 1319)])
def test_real_split_loads_whole(shared_data, split, rows):
    problems, quarantined = _split(list(gsm8k.load(split)))
    assert len(problems) == rows and quarantined == []
    assert len({p.problem_id for p in problems}) == rows
    assert {p.source for p in problems} == {"gsm8k"} and {p.split for p in problems} == {split}
    for p in problems:
        assert re.fullmatch(r"[1-9][0-9]*-step", p.level)
        assert p.solution.endswith(f"#### {p.answer}")
        assert int(p.level.split("-")[0]) == sum(1 for line in p.solution.split("####")[0].split("\n") if line.strip())


def test_first_train_row(shared_data):
    first = next(gsm8k.load("train"))
    question = (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?"
    )
    assert first == Problem(
        problem_id=stable_id("gsm8k", question),
        source="gsm8k",
        split="train",
        level="2-step",
        question=question,
        solution="Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
        answer="72",
    )


def test_ids_are_stable_across_loads(shared_data):
    assert [p.problem_id for p in gsm8k.load("test")] == [p.problem_id for p in gsm8k.load("test")]


def test_default_dir_is_beside_the_checkout_and_env_overrides_it(shared_data, tmp_path, monkeypatch):
    assert shared_data / "gsm8k" == gsm8k.DEFAULT_DIR
    monkeypatch.setenv("MATHFACTORY_DATA", str(tmp_path))
    write_file_rows(str(tmp_path / "gsm8k" / "test.jsonl"), [GOOD])
    assert [p.question for p in gsm8k.load("test")] == [GOOD["question"]]


@pytest.mark.parametrize(
    "answer,stage,final",
    [
        ("a=<<1+1=2>>2\nb=<<2*3=6>>6\nc\n#### 6", "3-step", "6"),
        ("a\n\n  \nb\n#### 1,000", "2-step", "1,000"),  # blank lines are not steps; the answer is kept as written
        ("one step\n####42  ", "1-step", "42"),  # no space after ####, trailing blanks
    ],
)
def test_parse_row_steps_and_answer(answer, stage, final):
    p = gsm8k.parse_row({"question": "q?", "answer": answer}, "f.jsonl:1", "test")
    assert (p.level, p.answer, p.solution, p.split) == (stage, final, answer, "test")


@pytest.mark.parametrize(
    "row,reason",
    [
        ({"question": "q"}, "missing field 'answer'"),
        ({"question": "q", "answer": None}, "missing field 'answer'"),
        ({"question": "", "answer": "a\n#### 1"}, "field 'question' is empty"),
        ({"question": 12, "answer": "a\n#### 1"}, "field 'question' is int, expected a string"),
        ({"question": "q", "answer": "the answer is 7"}, "answer has no '####' final-answer line"),
        ({"question": "q", "answer": "a\n#### 1\n#### 2"}, "answer has more than one '####' line"),
        ({"question": "q", "answer": "a\n####   "}, "answer has nothing after '####'"),
        ({"question": "q", "answer": "#### 5"}, "answer has no solution steps before '####'"),
    ],
)
def test_parse_row_refuses(row, reason):
    q = gsm8k.parse_row(row, "f.jsonl:9", "train")
    assert q == Quarantined(stage="problems", origin="f.jsonl:9", reason=reason, excerpt=json.dumps(row)[:200])


def test_bad_lines_are_quarantined_and_good_lines_still_load(tmp_path):
    path = tmp_path / "train.jsonl"
    long_question = "x" * 500
    lines = [
        json.dumps(GOOD),  # 1
        '{"question": "broken", ',  # 2 malformed JSON
        b'{"question": "na\xefve", "answer": "a\\n#### 1"}',  # 3 not UTF-8
        json.dumps({"question": long_question}),  # 4 no answer
        json.dumps({"question": "q", "answer": "no marker"}),  # 5 no ####
        json.dumps([GOOD]),  # 6 an array
        "",  # 7 blank: ignored
        json.dumps({**GOOD, "question": "Second good one?"}),  # 8
    ]
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    problems, quarantined = _split(list(gsm8k.load("train", str(path))))
    assert [p.question for p in problems] == [GOOD["question"], "Second good one?"]
    assert [q.origin for q in quarantined] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    reasons = [q.reason for q in quarantined]
    assert reasons[0].startswith("malformed JSON") and reasons[1].startswith("not UTF-8")
    assert reasons[2:] == ["missing field 'answer'", "answer has no '####' final-answer line",
                           "expected a JSON object, got list"]
    assert quarantined[2].excerpt == json.dumps({"question": long_question})[:200]
    assert {q.stage for q in quarantined} == {"problems"}


def test_parquet_and_fsspec_urls_and_folders(tmp_path):
    rows = [GOOD, {"question": "q", "answer": "no marker"}]
    url = f"memory://gsm8k-{tmp_path.name}/train.parquet"
    write_file_rows(url, rows)
    problems, quarantined = _split(list(gsm8k.load("train", url)))
    assert [p.answer for p in problems] == ["7"] and [q.origin for q in quarantined] == [f"{url}:2"]
    # a folder means {folder}/{split}.jsonl
    write_file_rows(str(tmp_path / "test.jsonl"), [GOOD])
    assert [p.split for p in gsm8k.load("test", str(tmp_path))] == ["test"]


def test_s3_url(s3_url, s3_options):
    write_file_rows(f"{s3_url}/test.jsonl", [GOOD], **s3_options)
    assert [p.answer for p in gsm8k.load("test", f"{s3_url}/test.jsonl", **s3_options)] == ["7"]


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/validation.jsonl")):
        list(gsm8k.load("train", str(tmp_path / "validation.jsonl")))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/train.jsonl")):
        list(gsm8k.load("train", str(tmp_path)))


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        gsm8k.load("dev")
