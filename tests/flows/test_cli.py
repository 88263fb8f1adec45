"""`mathfactory` commands that need no flow run: grading a user's file, config resolution, bad arguments."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
from typer.testing import CliRunner

from mathfactory.flows.cli import app

cli = CliRunner(env={"COLUMNS": "400"})  # rich wraps error panels at the terminal width


def test_verify_grades_a_users_jsonl_one_row_per_input_row(tmp_path):
    src = tmp_path / "preds.jsonl"
    rows = [
        {"gold": "1,000", "output": "So the total is 1000.0 dollars.\n#### 1000"},
        {"gold": "18", "output": "The answer is 17."},
        {"gold": "\\frac{1}{2}", "output": "Thus $\\boxed{\\dfrac{1}{2}}$."},
        {"gold": "7", "output": "I am not sure."},
        {"gold": "3"},  # no prediction column
    ]
    src.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"{not json\n\xff\xfe\n")
    out = tmp_path / "graded.parquet"
    result = cli.invoke(app, ["verify", str(src), "--gold", "gold", "--pred", "output", "--out", str(out)])
    assert result.exit_code == 0, result.output
    graded = pq.read_table(out).to_pylist()
    assert [(g["correct"], g["reason"]) for g in graded] == [
        (True, "correct"), (False, "wrong"), (True, "correct"), (False, "no_answer"),
        (False, "unparseable"), (False, "unparseable"), (False, "unparseable"),
    ]
    assert f"{src}:5: no usable output column" in result.output
    assert f"{src}:6: malformed JSON" in result.output and f"{src}:7: not UTF-8" in result.output


def test_verify_missing_file_is_one_clear_line(tmp_path):
    result = cli.invoke(app, ["verify", str(tmp_path / "nope.jsonl"), "--gold", "a", "--pred", "b"])
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.output


HEAVY = ("torch", "prefect", "ray", "transformers", "math_verify")
LOADED = f"import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"


def test_the_cli_and_a_verify_run_import_no_heavy_library(tmp_path):
    """`mathfactory verify` starts in a fraction of a second only while nothing on its path imports these (math-verify
    runs in the judge's worker processes): a top-level import in flows/cli.py would undo it silently."""
    src = tmp_path / "preds.jsonl"
    src.write_text(json.dumps({"gold": "2", "out": "#### 2"}) + "\n" + json.dumps({"gold": "x^2", "out": "$x^2$"}))
    imported = subprocess.run([sys.executable, "-c", f"import mathfactory.flows.cli; {LOADED}"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert imported == []
    run = ("from typer.testing import CliRunner; from mathfactory.flows.cli import app; "
           f"r = CliRunner().invoke(app, ['verify', {str(src)!r}, '--gold', 'gold', '--pred', 'out']); "
           f"assert r.exit_code == 0 and 'correct' in r.output, r.output; {LOADED}")
    assert subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, check=True).stdout.split() == []


def test_config_prints_the_resolved_config_and_run_id():
    result = cli.invoke(app, ["config", "--set", "sample.n=8"])
    assert result.exit_code == 0, result.output
    assert '"n": 8' in result.output and "run id: toy-" in result.output


def test_bad_preset_and_override_name_the_argument():
    unknown = cli.invoke(app, ["config", "--preset", "nope"])
    assert unknown.exit_code == 2 and "unknown preset 'nope'" in unknown.output and "toy" in unknown.output
    typo = cli.invoke(app, ["config", "--set", "sample.nn=3"])
    assert typo.exit_code == 2 and "sample.nn" in typo.output
    bad = cli.invoke(app, ["config", "--set", "sample.n=0"])
    assert bad.exit_code == 2 and "sample.n" in bad.output
    date = cli.invoke(app, ["run", "--date", "2026-13-01"])
    assert date.exit_code == 2 and "YYYY-MM-DD" in date.output
