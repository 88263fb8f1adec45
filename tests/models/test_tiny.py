import pytest
import torch
from support import TINY_MODEL
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathfactory.tasks.domains import toy
from mathfactory.tasks.models import tiny
from mathfactory.tasks.policy import PolicyConfig, sft_rows

# The two short stages keep rows near 100 tokens, so 20 steps take seconds.
TINY = TINY_MODEL


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Ops this small gain nothing from a second thread, and two threads on a busy 2-core box crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rows():
    return sft_rows(toy.generate(64, "train", seed=3, levels=["grade_school", "middle_school"]))


@pytest.fixture(scope="module")
def texts(rows):
    return [r["prompt"] + r["completion"] for r in rows]


@pytest.fixture(scope="module")
def tok(texts):
    return tiny.train_tokenizer(texts, 400)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tok, rows):
    out = tmp_path_factory.mktemp("policy")
    cfg = PolicyConfig(**TINY)
    return out, tiny.sft(tiny.init_model(tok, cfg), tok, rows, cfg, out)


def test_every_digit_is_its_own_token(tok, texts):
    digit_tokens = [t for t in tok.get_vocab() if any(c in "0123456789" for c in t)]
    assert sorted(digit_tokens) == list("0123456789")
    ids = tok("so 12*34=<<12*34=408>>408", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids)[-3:] == ["4", "0", "8"]
    assert len(tok) > 300  # the merges were learned: words are single tokens, not bytes


def test_decode_inverts_encode(tok, texts):
    for text in [*texts, "Zoë pays €12.50\tfor 3 pens.\n\n#### 7"]:  # unseen characters too: byte-level
        assert tok.decode(tok(text).input_ids) == text


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(tok, rows):
    # What makes the completion-only mask exact: no token straddles the "Answer:\n" boundary.
    for r in rows:
        prompt_ids = tok(r["prompt"]).input_ids
        assert tok(r["prompt"] + r["completion"]).input_ids[: len(prompt_ids)] == prompt_ids


def test_tokenizer_saves_and_loads_offline(tok, texts, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.eos_token, loaded.pad_token) == (tiny.EOS, tiny.PAD)
    assert loaded.eos_token_id != loaded.pad_token_id
    assert [loaded(t).input_ids for t in texts] == [tok(t).input_ids for t in texts]


def test_init_is_seeded_and_sized_by_the_config(tok):
    cfg = PolicyConfig(**TINY)
    a, b = tiny.init_model(tok, cfg), tiny.init_model(tok, cfg)
    c = tiny.init_model(tok, PolicyConfig(**{**TINY, "seed": 1}))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert (a.config.hidden_size, a.config.num_hidden_layers, a.config.vocab_size) == (32, 2, len(tok))


def test_loss_is_on_the_completion_only(tok, rows, tmp_path):
    cfg = PolicyConfig(**TINY)
    trainer = tiny.build_trainer(tiny.init_model(tok, cfg), tok, rows, cfg, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for i, r in enumerate(rows[:4]):
        n_prompt = len(tok(r["prompt"]).input_ids)
        n_all = len(tok(r["prompt"] + r["completion"] + tok.eos_token).input_ids)
        labels = batch["labels"][i][batch["attention_mask"][i] == 1]
        assert (labels[:n_prompt] == -100).all()
        assert (labels[n_prompt:] != -100).sum() == n_all - n_prompt  # completion + EOS, all trained
        assert labels[-1] == tok.eos_token_id


def completion_loss(model, tok, rows) -> float:
    """Mean next-token loss over the completion (+ EOS) of each row, teacher-forced."""
    total, count = 0.0, 0
    model.eval()
    for r in rows:
        n_prompt = len(tok(r["prompt"]).input_ids)
        ids = tok(r["prompt"] + r["completion"] + tok.eos_token, return_tensors="pt").input_ids
        labels = ids.clone()
        labels[:, :n_prompt] = -100
        with torch.no_grad():
            total += model(input_ids=ids, labels=labels).loss.item() * (ids.shape[1] - n_prompt)
        count += ids.shape[1] - n_prompt
    return total / count


def test_length_batches_are_near_equal_in_length_shuffled_and_cover_every_row():
    lengths = [(i * 37) % 101 for i in range(96)]
    sampler = tiny.LengthBatches(lengths, batch_size=8, seed=0)
    epochs = [list(sampler), list(sampler)]
    for order in epochs:
        assert sorted(order) == list(range(96))  # each row once per epoch
        batches = [order[i:i + 8] for i in range(0, 96, 8)]
        spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
        assert max(spans) <= 10  # vs ~90 for random batches of these lengths
        firsts = [min(lengths[i] for i in b) for b in batches]
        assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)  # no length sweep
    assert epochs[0] != epochs[1]
    assert list(tiny.LengthBatches(lengths, 8, seed=0)) == epochs[0]  # seeded


def test_sft_learns_and_saves_a_loadable_model(trained, tok, rows):
    out, m = trained
    assert {"params", "train_rows", "steps", "final_loss", "train_tokens_per_s", "wall_s"} <= m.keys()
    assert (m["train_rows"], m["steps"], m["truncated_rows"]) == (64, 20, 0)
    # Logged losses are of one length bucket each (LengthBatches), so compare the same rows before and after.
    before = completion_loss(tiny.init_model(tok, PolicyConfig(**TINY)), tok, rows[:16])
    assert completion_loss(AutoModelForCausalLM.from_pretrained(out), tok, rows[:16]) < 0.8 * before
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == m["params"]
    enc = loaded(["Question: Ava has 3 apples.\nAnswer:\n"], return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=loaded.pad_token_id)
    assert ids.shape[1] > enc["input_ids"].shape[1]


@pytest.mark.parametrize("n", [0, 3])
def test_too_few_rows_is_refused_with_the_count(tok, rows, tmp_path, n):
    cfg = PolicyConfig(**TINY)
    with pytest.raises(ValueError, match=f"got {n} training rows"):
        tiny.sft(tiny.init_model(tok, cfg), tok, rows[:n], cfg, tmp_path)


def test_completion_nll_is_the_sft_loss_of_each_row(trained, tok, rows):
    from mathfactory.tasks.models.likelihood import completion_nll

    out, _ = trained
    model = AutoModelForCausalLM.from_pretrained(out)
    nll = completion_nll(out, rows[:4])
    assert nll == pytest.approx([completion_loss(model, tok, [r]) for r in rows[:4]], rel=1e-4)
    # The completions it was trained on are likelier than the same completions reversed.
    shuffled = [{"prompt": r["prompt"], "completion": r["completion"][::-1]} for r in rows[:4]]
    assert max(nll) < min(completion_nll(out, shuffled))
