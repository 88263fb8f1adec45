import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM

from mathfactory.tasks.core import formatting
from mathfactory.tasks.engines.base import Completion, Engine, SamplingParams
from mathfactory.tasks.engines.transformers_engine import TransformersEngine, sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = SamplingParams(temperature=0, max_new_tokens=24)
UNSEEN = [formatting.prompt("What is 8 plus 1?"), formatting.prompt("Sam has 3 pens. How many pens does he have?")]
LONG = formatting.prompt("A farmer has " + ", ".join(f"{i} cows in field {i}" for i in range(1, 12)) + ". How many cows?")
# Enough rows of spread-out lengths that decode attention splits them into groups with different padding.
MIXED = [formatting.prompt(f"Ann has {i} {'big ' * (i % 7)}boxes of {3 * i} pens. How many pens?") for i in range(1, 19)]


@pytest.fixture(scope="module")
def engine(tiny_model) -> TransformersEngine:
    return TransformersEngine(tiny_model.path, batch_size=64)


@pytest.fixture(scope="module")
def runs_on(tiny_model) -> str:
    """A memorized prompt whose answer runs on into a next question (no EOS): the stop-string case."""
    return tiny_model.runs_on


@pytest.fixture(scope="module")
def ends_with_eos(tiny_model) -> list[str]:
    """Memorized prompts whose answers end with EOS."""
    return list(tiny_model.ends_with_eos)


def reference_greedy(model, tok, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """model.generate's greedy text and token count (through EOS) for one prompt alone: no padding."""
    enc = tok(prompt, return_tensors="pt")
    ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)[0, enc.input_ids.shape[1]:].tolist()
    ids = ids[: ids.index(tok.eos_token_id) + 1] if tok.eos_token_id in ids else ids
    return tok.decode(ids, skip_special_tokens=True), len(ids)


@pytest.fixture(scope="module")
def hf_greedy(tiny_model, engine):
    """reference_greedy on a model loaded apart from the engine's (which runs its own attention function)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path).eval()
    return lambda prompt, max_new_tokens: reference_greedy(model, engine.tokenizer, prompt, max_new_tokens)


def test_is_an_engine_on_the_fast_path(engine):
    assert isinstance(engine, Engine)
    assert engine.ragged  # a Llama gets the preallocated cache and grouped attention


def test_greedy_gives_the_memorized_answers_in_prompt_order(tiny_model, ends_with_eos):
    prompts = ends_with_eos + ends_with_eos[::-1]
    engine = TransformersEngine(tiny_model.path, batch_size=2)  # several batches, sorted by length
    out = engine.generate(prompts, SamplingParams(n=2, temperature=0, max_new_tokens=24))
    assert [len(cs) for cs in out] == [2] * len(prompts)
    for prompt, completions in zip(prompts, out, strict=True):
        assert completions == [Completion(tiny_model.memorized[prompt], completions[0].n_tokens, "stop")] * 2


def test_greedy_equals_hf_generate_token_for_token(engine, hf_greedy, ends_with_eos, runs_on):
    prompts = [*ends_with_eos, runs_on, *UNSEEN, LONG, *MIXED]
    out = engine.generate(prompts, GREEDY)
    for prompt, (c,) in zip(prompts, out, strict=True):
        assert (c.text, c.n_tokens) == hf_greedy(prompt, GREEDY.max_new_tokens)


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_a_batch_gives_each_prompt_what_it_gets_alone(tiny_model, engine, ends_with_eos, temperature):
    """Padding, sorting, splitting into batches, grouped attention and dropping finished rows change nothing."""
    prompts = [LONG, *ends_with_eos, *MIXED, *UNSEEN]
    params = SamplingParams(n=2, temperature=temperature, max_new_tokens=16, stop=formatting.STOP, seed=5)
    alone = [engine.generate([p], params)[0] for p in prompts]
    assert engine.generate(prompts, params) == alone
    assert TransformersEngine(tiny_model.path, batch_size=7).generate(prompts, params) == alone
    assert {c.finish_reason for cs in alone for c in cs} == {"stop", "length"}  # rows finish at different steps


def test_a_sliding_window_model_takes_the_plain_path(tmp_path, tiny_model):
    """No preallocated cache or grouped attention where layers are not all full attention: HF's own cache."""
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    config = MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, sliding_window=8, max_position_embeddings=256, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(1)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = TransformersEngine(tmp_path)
    assert not engine.ragged
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    out = engine.generate([LONG, *UNSEEN], SamplingParams(temperature=0, max_new_tokens=12))
    for prompt, (c,) in zip([LONG, *UNSEEN], out, strict=True):
        assert (c.text, c.n_tokens) == reference_greedy(model, tok, prompt, 12)


def test_eos_ends_a_completion_and_is_counted_but_not_returned(engine, tiny_model, ends_with_eos):
    prompt = ends_with_eos[0]
    (c,) = engine.generate([prompt], GREEDY)[0]
    answer_tokens = len(engine.tokenizer(tiny_model.memorized[prompt]).input_ids)
    assert c == Completion(tiny_model.memorized[prompt], answer_tokens + 1, "stop")


def test_stop_string_cuts_the_text_and_counts_tokens_through_it(engine, runs_on):
    params = SamplingParams(temperature=0, max_new_tokens=40, stop=formatting.STOP)
    (c,) = engine.generate([runs_on], params)[0]
    assert c.text == "2 + 3 = 5\n#### 5" and c.finish_reason == "stop"
    # n_tokens: the fewest generated tokens whose text holds the stop string.
    (free,) = engine.generate([runs_on], SamplingParams(temperature=0, max_new_tokens=40))[0]
    assert free.finish_reason == "length" and free.text.startswith(c.text + formatting.STOP[0])
    ids = engine.tokenizer(runs_on + free.text).input_ids[len(engine.tokenizer(runs_on).input_ids):]
    first = next(k for k in range(1, len(ids) + 1) if formatting.STOP[0] in engine.tokenizer.decode(ids[:k]))
    assert c.n_tokens == first < params.max_new_tokens


def test_stop_string_spanning_tokens_and_several_stops(engine, runs_on):
    params = SamplingParams(temperature=0, max_new_tokens=40, stop=("#### 7", "= 5\n#"))
    (c,) = engine.generate([runs_on], params)[0]
    assert c.text == "2 + 3 " and c.finish_reason == "stop"


def test_max_new_tokens_ends_with_length(engine, runs_on):
    out = engine.generate([runs_on, *UNSEEN, LONG], SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=3))
    # runs_on never emits EOS in its first 5 tokens; the others may stop early.
    assert all(c.finish_reason == "length" and c.n_tokens == 5 for c in out[0])
    for c in (c for cs in out for c in cs):
        assert c.n_tokens == 5 if c.finish_reason == "length" else 1 <= c.n_tokens <= 5


def test_same_seed_same_samples_other_seed_other_samples(engine):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=7)
    first = engine.generate(UNSEEN, params)
    assert engine.generate(UNSEEN, params) == first
    assert len({c.text for c in first[0]}) > 1  # the n samples of one prompt are not copies
    other = engine.generate(UNSEEN, SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=8))
    assert [c.text for cs in other for c in cs] != [c.text for cs in first for c in cs]
    # A prompt repeated in one call gets fresh samples, reproducibly.
    twice = engine.generate([UNSEEN[0], UNSEEN[0]], params)
    assert twice[0] == first[0] and twice[1] != twice[0]


def test_sampling_draws_from_the_tempered_nucleus():
    """Evenly spread uniforms land on each token in proportion to its probability, exactly."""
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    logits = torch.tensor([0.2, 0.5, 0.3]).log().expand(1000, 3)

    def counts(params: SamplingParams, logits: torch.Tensor = logits) -> list[int]:
        return torch.bincount(sample(logits, params, u), minlength=logits.shape[1]).tolist()

    assert counts(SamplingParams(temperature=1.0)) == [200, 500, 300]
    assert counts(SamplingParams(temperature=1.0, top_p=0.7)) == [0, 625, 375]  # 0.5 + 0.3 reach 0.7
    assert counts(SamplingParams(temperature=0.5)) == pytest.approx([105, 658, 237], abs=1)  # p^2, renormalized
    # A flat vocabulary: the nucleus is half of it, far more tokens than the head searched before sorting.
    assert sum(c > 0 for c in counts(SamplingParams(temperature=1.0, top_p=0.5), torch.zeros(1000, 512))) == 256


def test_tiny_top_p_is_greedy(engine, runs_on):
    prompts = [runs_on, *UNSEEN, LONG]
    nucleus = SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=GREEDY.max_new_tokens, seed=11)
    assert engine.generate(prompts, nucleus) == engine.generate(prompts, GREEDY)


def test_empty_call(engine):
    assert engine.generate([], GREEDY) == []


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SamplingParams(n=0), "n must be"),
        (lambda: SamplingParams(temperature=-0.1), "temperature"),
        (lambda: SamplingParams(top_p=0), "top_p"),
        (lambda: SamplingParams(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_sampling_params_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("prompts", "params", "error", "match"),
    [
        ("What is 2 plus 3?", GREEDY, TypeError, "not one string"),
        (UNSEEN, SamplingParams(stop=("",)), ValueError, "empty stop string"),
        ([UNSEEN[0], ""], GREEDY, ValueError, "tokenizes to nothing"),
    ],
)
def test_bad_calls_are_refused(engine, tiny_model, prompts, params, error, match):
    assert tiny_model.max_positions == 256
    with pytest.raises(error, match=match):
        engine.generate(prompts, params)


@pytest.mark.parametrize(("kwargs", "match"), [({"batch_size": 0}, "batch_size"), ({"dtype": "float33"}, "dtype")])
def test_bad_engine_settings_are_refused(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformersEngine(tiny_model.path, **kwargs)


def test_a_row_ends_at_the_models_last_position_instead_of_failing(engine, tiny_model):
    """A prompt near the model's length limit gets what room is left (finish_reason "length"); one at the limit
    gets an empty completion. Other prompts in the call are untouched."""
    long = engine.tokenizer.decode(engine.tokenizer(LONG * 2).input_ids[:248])  # room for ~8 tokens
    over = LONG * 2
    n_long, n_over = (len(engine.tokenizer(p).input_ids) for p in (long, over))
    assert n_long < tiny_model.max_positions - 2 and n_over >= tiny_model.max_positions
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=200, seed=5)
    outs = engine.generate([long, UNSEEN[0], over], params)
    assert all(c.n_tokens <= tiny_model.max_positions - n_long for c in outs[0])
    assert any(c.n_tokens == tiny_model.max_positions - n_long and c.finish_reason == "length" for c in outs[0])
    assert outs[1] == engine.generate([UNSEEN[0]], params)[0]
    assert all(c.text == "" and c.n_tokens == 0 and c.finish_reason == "length" for c in outs[2])


def test_each_prompt_is_prefilled_once_for_its_n_samples(engine, tiny_model, monkeypatch):
    """n samples share one prefill of their prompt (its KV rows are copied), and sample as they would alone."""
    calls = []
    prefill = engine._prefill
    monkeypatch.setattr(engine, "_prefill", lambda ids, m: calls.append(len(ids)) or prefill(ids, m))
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=16, seed=3)
    together = engine.generate(UNSEEN, params)
    assert calls == [2]  # two prompts, sixteen rows
    assert together[1] == engine.generate([UNSEEN[1]], params)[0]
    assert len({c.text for c in together[0]}) > 1  # copied caches still sample independently
    per_row = TransformersEngine(tiny_model.path, share_prefill=False)  # the baseline: one prefill per sample
    assert per_row.generate(UNSEEN, params) == together


def test_shared_prefill_samples_equal_hf_generate_token_for_token(engine, hf_greedy):
    """Under a greedy nucleus (top_p -> 0) all n rows decode from one copied prefill: each must be HF's greedy."""
    prompts = [*UNSEEN, LONG, *MIXED[:4]]
    nucleus = SamplingParams(n=4, temperature=1.0, top_p=1e-6, max_new_tokens=GREEDY.max_new_tokens, seed=2)
    for prompt, completions in zip(prompts, engine.generate(prompts, nucleus), strict=True):
        assert {(c.text, c.n_tokens) for c in completions} == {hf_greedy(prompt, GREEDY.max_new_tokens)}


def test_shards_in_threads_load_and_generate_at_once(tiny_model, ends_with_eos):
    """The local runner's shard threads: engines loaded and generating at the same time (transformers' loading is
    not thread-safe: unguarded, this crashed with "Cannot copy out of meta tensor"), each getting what it gets
    alone; torch's thread setting is per thread, so the caller's is untouched."""
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, stop=formatting.STOP, seed=3)
    alone = TransformersEngine(tiny_model.path).generate(ends_with_eos, params)
    start = threading.Barrier(4)

    def shard(_: int) -> list:
        start.wait()
        return TransformersEngine(tiny_model.path, num_threads=1).generate(ends_with_eos, params)

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what the engines change while they run
    try:
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(shard, range(4))) == [alone] * 4
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

