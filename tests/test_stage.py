"""A model stage's training through an S3 lake (moto on loopback), as any runner runs it: the directory and its
metrics land in the lake; a model that landed is kept on a retry; a partial copy from a crashed attempt is replaced
whole; the caller commits and reads it back."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from mathfactory.tasks.stage import Run, StageSpec, build, write_model


class Steps(BaseModel):
    steps: int = 3


def test_a_model_lands_in_the_lake_and_a_landed_one_is_kept(s3_url, s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("MATHFACTORY_CACHE", str(tmp_path / "cache"))
    trained = []

    def train(cfg: Steps, run: Run, out_dir: Path) -> dict:
        """A stand-in trainer: one weights file per step, the steps as its metrics."""
        trained.append(cfg.steps)
        for step in range(cfg.steps):
            (out_dir / f"weights-{step}.bin").write_bytes(bytes([step]) * 8)
        return {"steps": cfg.steps}

    spec = StageSpec("model", None, Steps, train, needs="gpu")
    run = Run(lake=s3_url, run_id="r")
    lake = run.store
    # A crashed attempt left a partial copy with a file the real training does not write.
    lake.put_dir(_dir(tmp_path / "partial", {"weights-9.bin": b"stale"}), "r", "model")

    assert write_model(spec, Steps(), run) == {"steps": 3} and trained == [3]
    assert lake.marker("r", "model") is None  # not committed: the caller does, wherever this ran
    files = sorted(p.rsplit("/", 1)[1] for p in lake.fs.ls(f"{lake.stage_path('r', 'model')}/model", detail=False))
    assert files == ["weights-0.bin", "weights-1.bin", "weights-2.bin"]
    assert lake.shard_summary("r", "model", 0) == {"steps": 3}

    # The pipeline died before its commit: the retry keeps the model that landed and commits it.
    assert build(spec, Steps(), run) == lake.uri("r", "model") and trained == [3]
    assert lake.marker("r", "model")["metrics"] == {"steps": 3}
    local = lake.local_dir("r", "model")
    assert local.is_relative_to(tmp_path / "cache") and (local / "weights-2.bin").read_bytes() == bytes([2]) * 8


def test_a_failed_training_leaves_no_metrics(s3_url, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)

    def train(cfg: Steps, run: Run, out_dir: Path) -> dict:
        (out_dir / "weights-0.bin").write_bytes(b"half")
        raise RuntimeError("out of memory at step 1")

    run = Run(lake=s3_url, run_id="r")
    with pytest.raises(RuntimeError, match="out of memory"):
        write_model(StageSpec("model", None, Steps, train), Steps(), run)
    assert run.store.shard_summary("r", "model", 0) is None  # so the next attempt trains again


def _dir(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path
