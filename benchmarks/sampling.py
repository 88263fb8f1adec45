"""A ~2M-parameter Llama -> decode tokens/s of TransformersEngine vs a teacher-forced forward, side by side.

The figure of merit is decode tokens/s at batch 64 divided by the same model's forward tokens/s, one forward
pass over as many sequences of prompt + generated length (target >= 0.3). Decode time is end to end: tokenizing,
prefill, sampling, stop checks, detokenizing. The forward counts every position it computes, padding included.
HF `generate` (dynamic and static cache) and the engine on HF's DynamicCache (its loop and sampling, without
the preallocated cache and the grouped prefill) run on the same prompts for comparison. Each figure is the best of --repeats rounds, the paths interleaved within a round, because other
jobs share these machines.

    .venv/bin/python benchmarks/sampling.py                   # GSM8K and toy prompts, 1 thread
    .venv/bin/python benchmarks/sampling.py --prompts toy --threads 1 2 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from mathfactory.tasks.core import formatting  # noqa: E402
from mathfactory.tasks.domains import toy  # noqa: E402
from mathfactory.tasks.engines import transformers_engine  # noqa: E402
from mathfactory.tasks.engines.base import SamplingParams  # noqa: E402
from mathfactory.tasks.engines.transformers_engine import TransformersEngine  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def build_model(out: Path) -> int:
    """Byte-level BPE (1024) on GSM8K train + a random-init Llama (hidden 192, 4 layers, 4 heads): ~2M params."""
    with open(GSM8K / "train.jsonl") as f:
        rows = [json.loads(line) for line in f][:2000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [formatting.prompt(r["question"]) + formatting.completion(r["answer"]) for r in rows],
        trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|pad|>", "<|endoftext|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def run(model_dir: Path, prompts: list[str], params: SamplingParams, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    engine = TransformersEngine(model_dir, batch_size=len(prompts), num_threads=threads)
    # HF generate and the forward get their own copy: the engine's runs its own attention function.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    enc = tok(prompts, return_tensors="pt", padding=True)
    rows, prompt_len, g = len(prompts), enc.input_ids.shape[1], params.max_new_tokens
    # Teacher forcing needs no real continuation: the forward's cost does not depend on the token ids.
    full_ids = torch.cat([enc.input_ids, torch.randint(2, len(tok), (rows, g))], dim=1)
    full_mask = torch.cat([enc.attention_mask, torch.ones(rows, g, dtype=torch.long)], dim=1)

    def engine_tokens(cache_factory=None) -> int:
        default = transformers_engine.new_cache
        if cache_factory is not None:
            transformers_engine.new_cache = cache_factory
        try:
            return sum(c.n_tokens for cs in engine.generate(prompts, params) for c in cs)
        finally:
            transformers_engine.new_cache = default

    def hf_tokens(cache: str) -> int:
        torch.manual_seed(params.seed)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                                 top_k=None, max_new_tokens=g, cache_implementation=cache)
        new = out[:, prompt_len:]
        # A row's tokens run through its first EOS; what follows is padding.
        is_eos = new == tok.eos_token_id
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((rows,), new.shape[1]))
        return int(ends.sum())

    def forward_tokens() -> int:
        with torch.inference_mode():
            model(input_ids=full_ids, attention_mask=full_mask)
        return full_ids.numel()

    paths = {
        "engine (preallocated cache)": engine_tokens,
        "engine on a DynamicCache": lambda: engine_tokens(lambda config, rows, capacity: DynamicCache(config=config)),
        "HF generate, dynamic cache": lambda: hf_tokens("dynamic"),
        "HF generate, static cache": lambda: hf_tokens("static"),
        "forward (teacher-forced)": forward_tokens,
    }
    warm = SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p, max_new_tokens=4)
    engine.generate(prompts[:4], warm)
    forward_tokens()
    best: dict[str, tuple[float, int]] = {}
    for _ in range(repeats):
        for name, fn in paths.items():
            seconds, tokens = timed(fn)
            if name not in best or tokens / seconds > best[name][1] / best[name][0]:
                best[name] = (seconds, tokens)
    return {"threads": threads, "prompt_len": prompt_len, "best": best}


def prompt_set(name: str, count: int) -> list[str]:
    """GSM8K test questions or the embedded default's toy questions: 40 to 230 tokens, ~95 on average."""
    if name == "toy":
        return [formatting.prompt(p.question) for p in toy.generate(count, "test", seed=0)]
    with open(GSM8K / "test.jsonl") as f:
        return [formatting.prompt(json.loads(line)["question"]) for line in f][:count]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="prompts, one completion each: one batch")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prompts", nargs="+", choices=["gsm8k", "toy"], default=["gsm8k", "toy"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads; try 1 2 to compare")
    ap.add_argument("--repeats", type=int, default=2)
    # The rollouts stage's defaults: T=0.8, top_p=1.
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=1.0)
    args = ap.parse_args()
    params = SamplingParams(n=1, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        n_params = build_model(Path(tmp))
        print(f"model: Llama, {n_params / 1e6:.2f}M params, hidden 192, 4 layers, 4 heads, vocab 1024 BPE, random init")
        print(f"batch {args.batch}, T={params.temperature}, top_p={params.top_p}, max_new_tokens "
              f"{args.max_new_tokens}, best of {args.repeats}; load average before: {os.getloadavg()[0]:.2f}")
        summary = []
        for prompts_name in args.prompts:
            prompts = prompt_set(prompts_name, args.batch)
            for threads in args.threads:
                result = run(Path(tmp), prompts, params, threads, args.repeats)
                best = result["best"]
                fwd_s, fwd_tokens = best["forward (teacher-forced)"]
                forward_rate = fwd_tokens / fwd_s
                print(f"\n== {prompts_name} prompts (padded length {result['prompt_len']}), torch threads {threads}")
                print(f"{'path':30s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>8s} {'/ forward':>9s}")
                for name, (seconds, tokens) in best.items():
                    rate = tokens / seconds
                    print(f"{name:30s} {tokens:7d} {seconds:8.3f} {rate:8.0f} {rate / forward_rate:9.3f}")
                eng_s, eng_tokens = best["engine (preallocated cache)"]
                hf_s, hf_tokens = best["HF generate, dynamic cache"]
                summary.append((prompts_name, threads, eng_tokens / eng_s, forward_rate,
                                (eng_tokens / eng_s) / (hf_tokens / hf_s)))
        print(f"\n{'prompts':8s} {'threads':>7s} {'decode tok/s':>12s} {'forward tok/s':>13s} {'ratio':>6s} "
              f"{'vs HF generate':>14s}   (target ratio >= 0.3)")
        for prompts_name, threads, decode, forward, vs_hf in summary:
            print(f"{prompts_name:8s} {threads:7d} {decode:12.0f} {forward:13.0f} {decode / forward:6.3f} {vs_hf:13.2f}x")
        print(f"load average after: {os.getloadavg()[0]:.2f} (other jobs on the machine skew every figure)")


if __name__ == "__main__":
    main()
