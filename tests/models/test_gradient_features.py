"""A tiny Llama + prompt/completion rows -> CountSketched completion-only gradients, checked against plain autograd."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import TINY_MODEL
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathfactory.tasks.core.influence import influence_scores, select_top
from mathfactory.tasks.domains import toy
from mathfactory.tasks.models import tiny
from mathfactory.tasks.models.influence import count_sketch, encode, gradient_features
from mathfactory.tasks.policy import PolicyConfig

TINY = {**TINY_MODEL, "vocab_size": 300}
INSTRUCTION = "Write a grade school math problem inspired by the text.\nText: {seed}\nProblem:\n"
PLACES = ("the harbor", "the old mill", "the valley", "the market", "the library", "the garden")
PROSE = ("The wind moved slowly over {place}.", "Nobody remembered who had painted the door of {place}.",
         "In autumn the fog settled on {place} before noon.", "A quiet song drifted across {place}.",
         "The stones of {place} were warm from the afternoon sun.", "Old letters were kept in a box at {place}.")


def math_pairs(split: str, seed: int, n: int) -> list[dict]:
    problems = toy.generate(n, split, seed=seed, levels=["grade_school", "middle_school"])
    return [{"prompt": INSTRUCTION.format(seed=f"{p.question.split('.')[0]}."),
             "completion": f"{p.question}\n{p.solution}\n"} for p in problems]


def prose_pairs(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": INSTRUCTION.format(seed=rng.choice(PROSE).format(place=rng.choice(PLACES))),
             "completion": " ".join(s.format(place=rng.choice(PLACES)) for s in rng.sample(PROSE, 3)) + "\n"}
            for _ in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Ops this small gain nothing from a second thread, and two threads on a busy 2-core box crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train_rows():
    return math_pairs("train", 0, 48) + prose_pairs(0, 48)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, train_rows):
    """A ~30k-parameter Llama trained for 40 AdamW steps on arithmetic and prose completions (loss on both)."""
    tok = tiny.train_tokenizer([r["prompt"] + r["completion"] for r in train_rows], TINY["vocab_size"])
    model = tiny.init_model(tok, PolicyConfig(**TINY))
    seqs = [tok(r["prompt"] + r["completion"] + tok.eos_token).input_ids for r in train_rows]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    labels = torch.tensor([s + [-100] * (width - len(s)) for s in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        batch = torch.randperm(len(seqs), generator=gen)[:16]
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("synthesizer")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def exact_gradient(model, tok, row: dict) -> torch.Tensor:
    """Flattened gradient of the mean cross-entropy over completion + EOS tokens, computed by hand."""
    prompt = tok(row["prompt"]).input_ids
    ids = tok(row["prompt"] + row["completion"] + tok.eos_token).input_ids
    assert ids[: len(prompt)] == prompt  # the rows here end their prompt on a token boundary
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    # Position t predicts token t + 1: completion tokens are predicted from positions len(prompt) - 1 onwards.
    loss = F.cross_entropy(logits[len(prompt) - 1:-1], torch.tensor(ids[len(prompt):]))
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def sketch(flat: torch.Tensor, dim: int, seed: int = 0) -> np.ndarray:
    bucket, sign = count_sketch(flat.numel(), dim, seed)
    return torch.zeros(dim).index_add_(0, bucket, flat * sign).numpy()


@pytest.fixture(scope="module")
def loaded(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def test_features_are_the_sketched_gradient_of_the_completion_only_loss(model_dir, loaded):
    model, tok = loaded
    rows = math_pairs("train", 1, 2) + prose_pairs(1, 1) + [{"prompt": INSTRUCTION.format(seed="Ava."),
                                                             "completion": ""}]
    features = gradient_features(model_dir, rows, dim=64)
    assert features.shape == (4, 64) and features.dtype == np.float32
    for row, got in zip(rows, features, strict=True):
        np.testing.assert_allclose(got, sketch(exact_gradient(model, tok, row), 64), rtol=1e-4, atol=1e-6)
    # An empty completion still trains EOS: a finite gradient, not a 0/0 over zero completion tokens.
    assert np.isfinite(features[3]).all() and np.linalg.norm(features[3]) > 0

    # Counting prompt tokens in the loss would give something else entirely.
    ids = tok(rows[0]["prompt"] + rows[0]["completion"] + tok.eos_token, return_tensors="pt").input_ids
    whole = model(input_ids=ids, labels=ids).loss
    whole_flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(whole, list(model.parameters()))])
    assert np.linalg.norm(sketch(whole_flat, 64) - features[0]) > 0.1 * np.linalg.norm(features[0])


def test_the_prompt_conditions_the_gradient(model_dir):
    row = math_pairs("train", 2, 1)[0]
    other = {**row, "prompt": INSTRUCTION.format(seed="The fog settled on the harbor.")}
    a, b = gradient_features(model_dir, [row, other], dim=64)
    assert np.linalg.norm(a - b) > 0.01 * np.linalg.norm(a)


def test_long_rows_lose_the_start_of_their_prompt_and_keep_the_completion(loaded):
    _, tok = loaded
    row = math_pairs("train", 3, 1)[0]
    full, n_prompt = encode(tok, row, max_length=10_000)
    assert full[-1] == tok.eos_token_id and n_prompt == len(tok(row["prompt"]).input_ids)
    n_completion = len(full) - n_prompt
    cut, n_cut = encode(tok, row, max_length=n_completion + 3)
    assert (cut, n_cut) == (full[-(n_completion + 3):], 3)
    # A completion that already ends with EOS gets no second one, as in TRL.
    assert encode(tok, {**row, "completion": row["completion"] + tok.eos_token}, 10_000) == (full, n_prompt)


def test_the_projection_depends_only_on_seed_size_and_dim():
    bucket, sign = count_sketch(10_000, 64, seed=0)
    again = count_sketch(10_000, 64, seed=0)
    assert torch.equal(bucket, again[0]) and torch.equal(sign, again[1])
    assert not torch.equal(bucket, count_sketch(10_000, 64, seed=1)[0])
    assert set(sign.tolist()) == {-1.0, 1.0} and bucket.min() == 0 and bucket.max() == 63
    assert torch.bincount(bucket, minlength=64).min() > 100  # ~156 per bucket: every bucket is used


def test_features_are_the_same_in_another_process_and_in_any_order_or_batching(model_dir, tmp_path):
    rows = math_pairs("train", 4, 5) + prose_pairs(4, 4)
    features = gradient_features(model_dir, rows, dim=128)
    assert np.array_equal(features, gradient_features(model_dir, rows, dim=128))
    code = ("import json, sys, numpy as np\n"
            "from mathfactory.tasks.models.influence import gradient_features\n"
            "rows = json.loads(sys.stdin.read())\n"
            f"np.save(sys.argv[1], gradient_features({str(model_dir)!r}, rows, dim=128))\n")
    out = tmp_path / "features.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], input=json.dumps(rows), text=True, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})  # as this process
    assert np.array_equal(np.load(out), features)
    # Other batches pad to other widths, which changes float summation order in the matmuls: equal to ~1e-6.
    shuffled = gradient_features(model_dir, rows[::-1], dim=128, batch_size=2)[::-1]
    np.testing.assert_allclose(shuffled, features, rtol=1e-4, atol=1e-5 * np.abs(features).max())


def test_the_sketch_preserves_cosines_between_exact_gradients(model_dir, loaded):
    model, tok = loaded
    rows = math_pairs("train", 5, 4) + prose_pairs(5, 4)
    exact = torch.stack([exact_gradient(model, tok, r) for r in rows]).numpy().astype(np.float64)
    projected = gradient_features(model_dir, rows, dim=2048).astype(np.float64)

    def cosines(x):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return (unit @ unit.T)[np.triu_indices(len(x), 1)]

    true, est = cosines(exact), cosines(projected)
    assert true.max() - true.min() > 0.5  # a spread of cosines (measured -0.15 .. 0.53), so errors would show
    # CountSketch's cosine error has sd ~ sqrt((1 + cos^2) / dim) ~ 0.03 at dim 2048; measured max 0.057
    # (rms 0.027) over these 28 pairs.
    assert np.abs(est - true).max() < 0.1
    ratio = np.linalg.norm(projected, axis=1) / np.linalg.norm(exact, axis=1)
    assert np.abs(ratio - 1).max() < 0.1


def test_arithmetic_seeds_outscore_prose_seeds_against_arithmetic_references(model_dir):
    rows = math_pairs("train", 6, 24) + prose_pairs(6, 24)
    groups = [f"math-{i // 3}" for i in range(24)] + [f"prose-{i // 3}" for i in range(24)]
    reference = gradient_features(model_dir, math_pairs("test", 7, 12))
    scores = influence_scores(gradient_features(model_dir, rows), groups, reference)
    math_scores = [s for g, (s, n) in scores.items() if g.startswith("math")]
    prose_scores = [s for g, (s, n) in scores.items() if g.startswith("prose")]
    assert {n for _, n in scores.values()} == {3} and len(math_scores) == len(prose_scores) == 8
    # Measured: math groups 0.07 .. 0.60 (mean 0.36), prose groups -0.11 .. 0.09 (mean -0.03); 7 of the top 8 math.
    assert np.mean(math_scores) > np.mean(prose_scores) + 0.2
    assert sum(g.startswith("math") for g in select_top({g: s for g, (s, _) in scores.items()}, 0.5)) >= 6
