import json

import pytest

from mathfactory.tasks.core.records import Quarantined, SeedText
from mathfactory.tasks.seeds import SEEDS, SeedsConfig
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import Lake

RUN = "seeds-test"


def test_a_user_corpus_is_chunked_and_bad_rows_are_skipped_counted_and_named(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    long = "A train leaves at 9. It travels 60 km per hour. " * 3
    corpus.write_text("\n".join([json.dumps({"text": long}), json.dumps({"text": "  "}), json.dumps({"text": 5}),
                                 "{not json", json.dumps({"body": "x"}), json.dumps({"text": "Half of 8 is 4."})]))
    lake = str(tmp_path / "lake")
    cfg = SeedsConfig(source="files", files=[str(corpus)], max_chars=60, n=None)
    build(SEEDS, cfg, Run(lake=lake, run_id=RUN))
    seeds = list(Lake(lake).read(RUN, "seeds", SeedText))
    assert [s.origin for s in seeds] == [f"{corpus}:1#0", f"{corpus}:1#1", f"{corpus}:1#2", f"{corpus}:6#0"]
    assert all(len(s.text) <= 60 for s in seeds) and " ".join(s.text for s in seeds[:3]) == " ".join(long.split())
    assert len({s.seed_id for s in seeds}) == 4
    skipped = {q.origin.rsplit(":", 1)[1]: q.reason for q in
               Lake(lake).read_part(RUN, "seeds/_quarantine", 0, Quarantined)}
    assert skipped == {"2": "empty text", "3": "'text' is not text (int)", "4": skipped["4"],
                       "5": "'text' is missing"}
    assert skipped["4"].startswith("malformed JSON")
    assert Lake(lake).marker(RUN, "seeds")["metrics"]["unusable_rows"] == 4


def test_gsm8k_train_is_a_real_corpus(tmp_path, shared_data):
    cfg = SeedsConfig(source="gsm8k", n=5, path=str(shared_data / "gsm8k"))
    build(SEEDS, cfg, Run(lake=str(tmp_path), run_id=RUN))
    seeds = list(Lake(str(tmp_path)).read(RUN, "seeds", SeedText))
    assert len(seeds) == 5 and all("####" in s.text or s.text.strip() for s in seeds)
    assert seeds[0].origin.endswith("train.jsonl:1#0")


def test_a_corpus_with_nothing_usable_fails_with_the_count(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(ValueError, match=r"no usable text \(1 rows skipped\)"):
        build(SEEDS, SeedsConfig(source="files", files=[str(corpus)]), Run(lake=str(tmp_path / "lake"),
                                                                          run_id=RUN))
