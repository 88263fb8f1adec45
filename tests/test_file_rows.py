"""iter_file_rows / write_file_rows: a user's JSONL or Parquet file -> (origin, row, error), bad lines named."""

import json
import math
import re

import pytest

from mathfactory.tasks.storage import DataError, iter_file_rows, write_file_rows

ROWS = [{"question": "1+1?", "answer": "2"}, {"question": "Ünïcode ∑ 😀", "answer": "3"}]


def test_jsonl_bad_lines_are_named_and_reading_goes_on(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(ROWS[0]).encode(),  # 1
        b"",  # 2 blank: skipped, but still counted
        b'{"question": "x", "answer": ',  # 3 truncated
        b'{"question": "caf\xe9"}',  # 4 latin-1, not UTF-8
        b"[1, 2]",  # 5 an array
        b"   \t",  # 6 whitespace only: skipped
        b'"just a string"',  # 7
        json.dumps(ROWS[1], ensure_ascii=False).encode() + b"\r",  # 8 CRLF ending
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = list(iter_file_rows(str(path)))
    assert [o for o, _, _ in out] == [f"{path}:{n}" for n in (1, 3, 4, 5, 7, 8)]
    assert [r for _, r, _ in out] == [ROWS[0], None, None, None, None, ROWS[1]]
    errors = [e for _, _, e in out]
    assert errors[0] is None and errors[-1] is None
    assert errors[1].startswith("malformed JSON")
    assert errors[2].startswith("not UTF-8") and "byte 17" in errors[2]
    assert errors[3] == "expected a JSON object, got list"
    assert errors[4] == "expected a JSON object, got str"


def test_what_json_accepts_is_read_as_json_reads_it(tmp_path):
    path = tmp_path / "edge.jsonl"  # the fast reader (orjson) refuses these; the rows must still be read
    path.write_text('{"a": NaN, "b": -Infinity}\n{"big": 123456789012345678901234567890}\n{"s": "\\ud83d"}\n')
    (_, nan, error), (_, big, _), (_, surrogate, _) = iter_file_rows(str(path))
    assert error is None and math.isnan(nan["a"]) and nan["b"] == -math.inf
    assert big == {"big": 123456789012345678901234567890}
    assert surrogate == {"s": "\ud83d"}


def test_last_line_without_newline_is_read(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]))
    assert [r for _, r, _ in iter_file_rows(str(path))] == ROWS


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_write_then_read_round_trip(tmp_path, ext):
    url = str(tmp_path / f"rows.{ext}")
    assert write_file_rows(url, ROWS) == 2
    out = list(iter_file_rows(url))
    assert out == [(f"{url}:1", ROWS[0], None), (f"{url}:2", ROWS[1], None)]


def test_parquet_rows_number_across_row_groups(tmp_path):
    url = str(tmp_path / "many.parquet")
    rows = [{"i": i, "text": f"t{i}"} for i in range(2500)]  # iter_file_rows reads 1024-row batches
    write_file_rows(url, rows)
    out = list(iter_file_rows(url))
    assert [r for _, r, _ in out] == rows
    assert out[-1][0] == f"{url}:2500"


def test_fsspec_url(tmp_path):
    url = f"memory://file-rows-{tmp_path.name}/rows.jsonl"
    write_file_rows(url, ROWS)
    assert [(o, r) for o, r, _ in iter_file_rows(url)] == [(f"{url}:1", ROWS[0]), (f"{url}:2", ROWS[1])]


@pytest.mark.parametrize("name", ["nope.jsonl", "nope.parquet"])
def test_missing_file_raises_naming_the_path(tmp_path, name):
    url = str(tmp_path / name)
    with pytest.raises(DataError, match=f"^{re.escape(url)}: no such file"):
        list(iter_file_rows(url))
    with pytest.raises(DataError, match="memory://nowhere/x.jsonl"):
        list(iter_file_rows("memory://nowhere/x.jsonl"))


def test_parquet_of_a_column_that_changes_type_is_refused_naming_the_file(tmp_path):
    url = str(tmp_path / "mixed.parquet")
    with pytest.raises(DataError, match=f"^{re.escape(url)}: cannot write Parquet .*a .jsonl output takes mixed"):
        write_file_rows(url, [{"id": 1}, {"id": "b"}])
    assert not (tmp_path / "mixed.parquet").exists()
    assert write_file_rows(str(tmp_path / "mixed.jsonl"), [{"id": 1}, {"id": "b"}]) == 2
