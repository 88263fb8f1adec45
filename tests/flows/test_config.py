"""FactoryConfig: presets, dotted overrides, run ids that follow the data-deciding fields only."""

import pytest

from mathfactory.flows.config import PRESETS, ConfigError, FactoryConfig, load_preset, preset_names
from mathfactory.tasks.distill import load_templates
from mathfactory.tasks.engines import OpenAIOptions, TransformersOptions, VLLMOptions


def test_toy_preset_is_the_default_config():
    assert "toy" in preset_names()
    toy = load_preset("toy")
    assert toy.model_dump(exclude={"lake", "runner"}) == FactoryConfig().model_dump(exclude={"lake", "runner"})
    # Only where shards run differs: the CPU preset runs two at once, the field's default one (a GPU's engine).
    assert toy.runner.max_workers == 2 and FactoryConfig().runner.max_workers == 1
    assert toy.config_hash() == FactoryConfig().config_hash()


def test_run_id_depends_on_data_not_on_where_the_lake_is():
    a = load_preset("toy", ["lake=/tmp/a"])
    assert a.run_id() == load_preset("toy", ["lake=s3://bucket/x"]).run_id()
    assert a.run_id() != load_preset("toy", ["sample.n=8"]).run_id()
    assert a.run_id("2026-11-01") == f"toy-2026-11-01-{a.config_hash()}"
    assert a.seed_for("2026-11-01") == a.seed_for("2026-11-01") != a.seed_for("2026-11-02")


def test_overrides_parse_yaml_values_and_pick_the_engine():
    cfg = load_preset("toy", ["problems.levels=[college, competition]", "sample.temperature=0"])
    assert cfg.problems.levels == ["college", "competition"] and cfg.sample.temperature == 0
    # Names from before schema 4 still load: `stages` for levels, `problems_per_stage`.
    old = load_preset("toy", ["problems.stages=[college, competition]", "evaluate.problems_per_stage=3"])
    assert (old.problems.levels, old.evaluate.problems_per_level) == (["college", "competition"], 3)
    assert isinstance(cfg.sample.engine, TransformersOptions)
    assert isinstance(load_preset("toy", ["sample.engine.kind=vllm"]).sample.engine, VLLMOptions)
    served = load_preset("toy", ["sample.engine={kind: openai, base_url: 'http://10.0.0.2:8000/v1', model: m}"])
    assert served.sample.engine == OpenAIOptions(base_url="http://10.0.0.2:8000/v1", model="m")


@pytest.mark.parametrize("override, named", [
    ("sample.nn=3", "sample.nn"),
    ("sample.n=0", "sample.n"),
    ("sample.engine.kind=tgi", "sample.engine"),
    ("nonsense", "section.field=value"),
    ("policy.hidden_size=30", "num_heads"),
])
def test_bad_override_names_the_field(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_preset("toy", [override])


def test_bad_date_and_preset_are_named():
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        FactoryConfig().run_id("11/24/2026")
    with pytest.raises(ConfigError, match="unknown preset 'gsm9k'"):
        load_preset("gsm9k")


def test_math500_without_a_model_to_evaluate_is_refused_up_front():
    with pytest.raises(ConfigError, match="no train split.*policy.pretrained"):
        load_preset("toy", ["problems.source=math500"])
    assert load_preset("toy", ["problems.source=math500", "policy.pretrained=/models/qwen"]).policy.pretrained


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_the_real_scale_presets_load_and_say_what_the_user_brings(name):
    cfg = load_preset(name)
    assert name in preset_names() and cfg.name == name
    assert {cfg.sample.engine.kind, cfg.credit.engine.kind, cfg.evaluate.engine.kind} == {"vllm"}
    assert cfg.runner.kind == "deployment" and cfg.problems.n_train is None and cfg.sample.problems_per_split is None
    assert "--set policy.pretrained=" in (PRESETS / f"{name}.yaml").read_text()  # its run command names the model
    if name == "math":  # the JiuZhang3.0 setting: a served teacher, the full prompts, MATH500 as the test set
        assert cfg.problems.test_source == "math500" and cfg.synthesis.teacher.engine.kind == "openai"
        assert set(load_templates(cfg.synthesis.teacher.templates).stages) == {
            "grade_school", "middle_school", "high_school", "college", "competition"}
