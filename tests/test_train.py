"""Training stages for real: a tiny pi_sft trained in the lake through the trainer process, then every method
trained by TRL from lake datasets, in its own process."""

import os
import shutil

import pydantic
import pytest
from support import TINY_MODEL, toy_training_sets

from mathfactory.tasks import trainer
from mathfactory.tasks.core.methods import TRAINED, datasets_for
from mathfactory.tasks.core.records import PreferencePair, Problem, SFTExample
from mathfactory.tasks.domains import toy
from mathfactory.tasks.policy import POLICY, PolicyConfig, policy_dir
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.train import SPECS, TrainConfig, stage_name

RUN = "train-test"
TINY = {**TINY_MODEL, "max_steps": 60}
FEW = {"max_steps": 2, "logging_steps": 1}  # a few steps of each method


def train_model(cfg: TrainConfig, method: str, lake: str, run_id: str) -> str:
    """The method's stage as the executor builds it (in this process)."""
    return build(SPECS[stage_name(method)], cfg, Run(lake=lake, run_id=run_id))


def write(lake: Lake, stage: str, cls: type, rows: list) -> None:
    lake.write_part(RUN, stage, 0, cls, rows)
    lake.commit(RUN, stage, cls)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    """A run with problems, pi_sft (trained through the trainer process) and one dataset per method."""
    lk = Lake(str(tmp_path_factory.mktemp("lake")))
    problems = toy.generate(64, "train", seed=5, levels=["grade_school", "middle_school"])
    write(lk, "problems", Problem, problems)
    build(POLICY, PolicyConfig(**TINY), Run(lake=lk.root, run_id=RUN))
    sft, pairs = toy_training_sets(problems)
    for name in ("rft", "rft_advantage"):
        write(lk, name, SFTExample, sft)
    for name in ("dpo_outcome", "dpo_edit", "dpo_step_cut", "dpo_step_prefix", "dpo_step_cut_max_drop"):
        write(lk, name, PreferencePair, pairs)
    return lk


def copy_run(lake: Lake, run: str, *stages: str) -> str:
    """A new run holding RUN's policy and `stages`, so a stage of RUN already trained can be trained afresh."""
    for stage in ("policy", *stages):
        shutil.copytree(f"{lake.root}/runs/{RUN}/{stage}", f"{lake.root}/runs/{run}/{stage}")
    return run


def test_pi_sft_is_trained_in_its_own_process(lake):
    m = lake.marker(RUN, "policy")["metrics"]
    assert m["steps"] == 60 and m["train_rows"] == 64 and m["final_loss"] < m["first_loss"]
    assert (policy_dir(Run(lake=lake.root, run_id=RUN)) / "config.json").is_file()


@pytest.mark.parametrize("method", TRAINED)
def test_each_method_trains_from_lake_datasets(lake, method):
    cfg = TrainConfig(trl_args={method: FEW})
    train_model(cfg, method, lake.root, RUN)
    marker = lake.marker(RUN, stage_name(method))
    m = marker["metrics"]
    assert m["method"] == method and m["steps"] == 2 and m["train_rows"] == 64
    assert m["datasets"] == [lake.uri(RUN, d) for d in datasets_for(method)]
    assert m["init"] == f"runs/{RUN}/policy" and m["train_tokens_per_s"] > 0
    model = lake.local_dir(RUN, stage_name(method))
    trainer.check_model_dir(model)  # a complete model directory: what evaluation loads
    if method.endswith("dpo"):
        assert len(m["rewards_margins"]) == 2

    train_model(cfg, method, lake.root, RUN)  # same inputs: skipped, nothing retrained
    assert lake.marker(RUN, stage_name(method)) == marker


def test_per_step_dpo_pulls_chosen_ahead_of_rejected(lake):
    """TRL's reward margin (beta * log-ratio of chosen minus rejected) grows over the steps."""
    cfg = TrainConfig(trl_args={"step_dpo": {"max_steps": 16, "learning_rate": 1e-3, "logging_steps": 1,
                                             "lr_scheduler_type": "constant"}})
    run = copy_run(lake, "margins", "dpo_step_cut")
    train_model(cfg, "step_dpo", lake.root, run)
    margins = lake.marker(run, "train_step_dpo")["metrics"]["rewards_margins"]
    assert len(margins) == 16 and margins[0] == pytest.approx(0, abs=1e-3)  # the reference is the start
    first, last = sum(margins[:4]) / 4, sum(margins[-4:]) / 4
    assert last > first and last > 0.05, margins


def test_bad_input_is_refused_with_the_reason(lake, tmp_path):
    run = copy_run(lake, "bad", "rft")
    with pytest.raises(pydantic.ValidationError, match="rft"):  # the error lists the valid methods
        TrainConfig(methods=["ppo"])
    with pytest.raises(ValueError, match=r"unknown training method 'sft'.*valid: rft, af_rft"):
        stage_name("sft")

    big_batch = TrainConfig(trl_args={"rft": {"per_device_train_batch_size": 128}})
    assert train_model(big_batch, "rft", lake.root, run) is None  # skipped, not failed, with why
    why = lake.skipped(run)["train_rft"]
    assert (why["reason"], why["rows"], why["minimum"]) == ("rft has 64 rows, fewer than one batch of 128", 64, 128)
    assert lake.marker(run, "train_rft") is None
    with pytest.raises(ValueError, match=r"dataset .*/rft has 64 rows, fewer than one batch of 128"):
        SPECS["train_rft"].compute(big_batch, Run(lake=lake.root, run_id=run), tmp_path / "out")  # the trainer's guard

    broken = tmp_path / "broken"
    shutil.copytree(policy_dir(Run(lake=lake.root, run_id=RUN)), broken)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match=r"is not a model directory \(missing: tokenizer"):
        trainer.launch(trainer.TrainJob("sft", str(tmp_path / "rows.jsonl"), str(tmp_path / "out"), "rft",
                                    str(broken)))

    typo = TrainConfig(trl_args={"rft": {"learnig_rate": 1.0}})
    with pytest.raises(trainer.TrainingError, match=r"sft trainer on .*/rft exited with status 1(.|\n)*learnig_rate"):
        train_model(typo, "rft", lake.root, run)
    assert lake.marker(run, "train_rft") is None  # no model, no marker: the next attempt starts clean


def test_several_gpus_launch_through_accelerate(tmp_path):
    assert trainer.command(tmp_path / "s.json")[1:] == ["-m", "mathfactory.tasks.trainer", str(tmp_path / "s.json")]
    multi = trainer.command(tmp_path / "s.json", num_processes=4)
    assert multi[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "4"]
    assert multi[-3:] == ["-m", "mathfactory.tasks.trainer", str(tmp_path / "s.json")]


def test_a_trainer_takes_its_share_of_the_cores(monkeypatch):
    """MATHFACTORY_JOBS (set by `mathfactory worker --jobs N`) splits the usable cores between the jobs a machine
    runs at once; OMP_NUM_THREADS, when the environment sets it (Ray does, to a task's CPUs), wins."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(trainer.JOBS_ENV, raising=False)
    cores = trainer.usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert trainer.trainer_threads() == str(cores)  # alone: every core, as torch would take
    monkeypatch.setenv(trainer.JOBS_ENV, "2")
    assert trainer.trainer_threads() == str(max(1, cores // 2))
    assert trainer.trainer_threads(num_processes=2) == str(max(1, cores // 4))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert trainer.trainer_threads() == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    for bad in ("two", "0"):
        monkeypatch.setenv(trainer.JOBS_ENV, bad)
        with pytest.raises(ValueError, match=rf"\$MATHFACTORY_JOBS='{bad}': expected the number of jobs"):
            trainer.trainer_threads()
