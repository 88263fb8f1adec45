"""GSM8K text -> a tiny Llama + byte-level BPE, built from scratch and overfit on a few answers, saved to a tmp dir."""

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mathfactory.tasks.core import formatting

EOS, PAD = "<|endoftext|>", "<|pad|>"
MAX_POSITIONS = 256

# prompt -> what the model learns to continue it with. The first runs on into a next question (the stop-string
# case); the others end with EOS.
RUNS_ON = formatting.prompt("What is 2 plus 3?")
MEMORIZED = {
    RUNS_ON: "2 + 3 = 5\n#### 5\nQuestion: What is 6 plus 1?\nAnswer:\n6 + 1 = 7\n#### 7\n",
    formatting.prompt("What is 7 minus 2?"): "7 - 2 = 5\n#### 5",
    formatting.prompt("What is 4 times 3?"): "4 * 3 = 12\n#### 12",
    formatting.prompt("Tom has 9 apples and eats 4. How many are left?"): "9 - 4 = 5\n#### 5",
}
ENDS_WITH_EOS = [p for p in MEMORIZED if p != RUNS_ON]


@dataclass(frozen=True)
class TinyModel:
    path: Path
    memorized: dict[str, str] = field(default_factory=lambda: dict(MEMORIZED))
    runs_on: str = RUNS_ON
    ends_with_eos: tuple[str, ...] = tuple(ENDS_WITH_EOS)
    max_positions: int = MAX_POSITIONS


@contextmanager
def _one_thread():
    """Ops on a 100k-parameter model are too small to share, and two threads on a busy 2-core box crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    with _one_thread():
        yield


def _tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=[PAD, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )


def _overfit(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, steps: int = 150) -> float:
    """A plain full-batch loop until the memorized answers are what greedy decoding gives."""
    seqs = [tokenizer(p + c).input_ids + ([] if p == RUNS_ON else [tokenizer.eos_token_id]) for p, c in MEMORIZED.items()]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, shared_data) -> TinyModel:
    with open(shared_data / "gsm8k" / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(500), f, strict=False)]
    texts = [formatting.prompt(r["question"]) + formatting.completion(r["answer"]) for r in rows]
    tokenizer = _tokenizer(texts + [p + c for p, c in MEMORIZED.items()])
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with _one_thread():
        loss = _overfit(model, tokenizer)
    assert loss < 0.05, f"the fixture model did not memorize its answers (loss {loss:.3f})"
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return TinyModel(path)
