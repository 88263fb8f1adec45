import pydantic
import pytest
import torch
from safetensors.torch import load_file
from support import TINY_MODEL

from mathfactory.tasks.core import formatting
from mathfactory.tasks.domains import toy
from mathfactory.tasks.policy import PolicyConfig, sft_rows, train_policy
from mathfactory.tasks.trainer import check_model_dir

CONFIG_AND_TOKENIZER = ("config.json", "tokenizer")  # what policy.pretrained must have (weights: the loader's)

TINY = TINY_MODEL


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problems():
    return toy.generate(64, "train", seed=5, levels=["grade_school", "middle_school"])


def test_every_field_is_documented_and_typos_are_refused():
    assert all(f.description for f in PolicyConfig.model_fields.values())
    with pytest.raises(pydantic.ValidationError, match="hidden_sise"):
        PolicyConfig(hidden_sise=64)
    with pytest.raises(pydantic.ValidationError, match="must divide"):
        PolicyConfig(hidden_size=30, num_heads=4)


def test_rows_are_the_shared_prompt_and_completion_format(problems):
    rows = sft_rows(problems)
    assert rows[0] == {"prompt": formatting.prompt(problems[0].question),
                       "completion": formatting.completion(problems[0].solution)}
    assert all(r["completion"].rstrip().endswith(f"#### {p.answer}") for r, p in zip(rows, problems, strict=True))


def test_same_config_and_problems_give_the_same_model(problems, tmp_path):
    cfg = PolicyConfig(**TINY)
    a, b = train_policy(cfg, problems, tmp_path / "a"), train_policy(cfg, problems, tmp_path / "b")
    assert a["losses"] == b["losses"]
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert a["vocab"] <= cfg.vocab_size and a["train_rows"] == len(problems)


def test_trl_args_pass_through_verbatim(problems, tmp_path):
    m = train_policy(PolicyConfig(**TINY, trl_args={"logging_steps": 5}), problems, tmp_path)
    assert len(m["losses"]) == 20 // 5
    with pytest.raises(TypeError, match="not_an_sft_argument"):
        train_policy(PolicyConfig(**TINY, trl_args={"not_an_sft_argument": 1}), problems, tmp_path)


@pytest.mark.parametrize("n", [0, 5])
def test_too_few_problems_is_refused_with_the_count(problems, tmp_path, n):
    with pytest.raises(ValueError, match=f"got {n} training rows"):
        train_policy(PolicyConfig(**TINY), problems[:n], tmp_path)


def test_a_pretrained_path_that_is_not_a_model_is_named_with_what_is_missing(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"policy.pretrained: .* is not a model directory \(missing: config.json; "
                                        r"tokenizer.json or tokenizer_config.json\); a model is one level down, "
                                        r"in: model"):
        check_model_dir(tmp_path, "policy.pretrained", str(tmp_path), CONFIG_AND_TOKENIZER)
    with pytest.raises(ValueError, match=r"missing: tokenizer.json or tokenizer_config.json\)$"):
        check_model_dir(tmp_path / "model", "policy.pretrained", str(tmp_path / "model"), CONFIG_AND_TOKENIZER)
    (tmp_path / "model" / "tokenizer.json").write_text("{}")
    check_model_dir(tmp_path / "model", "policy.pretrained", str(tmp_path / "model"), CONFIG_AND_TOKENIZER)


def test_pi_sft_from_a_base_keeps_its_tokenizer_and_starts_from_its_weights(problems, tmp_path):
    base = train_policy(PolicyConfig(**TINY), problems[:32], tmp_path / "base")
    # The size fields are the base's, whatever the config says: the model is continued, not re-made.
    tuned = train_policy(PolicyConfig(**{**TINY, "hidden_size": 64}), problems[32:], tmp_path / "tuned",
                         base=str(tmp_path / "base"))
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == (tmp_path / "base" / "tokenizer.json").read_text()
    assert tuned["params"] == base["params"] and tuned["train_rows"] == 32
    # It starts where the base ended, not from a fresh init (whose first loss is the base's first loss).
    assert tuned["first_loss"] < base["first_loss"]
    with pytest.raises(ValueError, match="from .*base.* needs at least one batch"):
        train_policy(PolicyConfig(**TINY), problems[:3], tmp_path / "x", base=str(tmp_path / "base"))
