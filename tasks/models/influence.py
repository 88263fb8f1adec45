"""Synthesizer model + prompt/completion rows -> LESS-style gradient features: per-row SFT-loss gradients, sketched.

JiuZhang3.0 (§2.3) picks seed texts by how much training on their pairs would help write target-style problems,
following LESS (Xia et al., 2024): each pair's gradient of the completion-only loss is projected to a low dimension
and compared with the gradients of a reference set. `mathfactory.tasks.core.influence` does the comparing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from mathfactory.tasks.models.loading import from_pretrained


def encode(tokenizer: PreTrainedTokenizerBase, row: dict, max_length: int) -> tuple[list[int], int]:
    """(token ids, number of leading prompt tokens): the sequence TRL's SFT trains on, cut to `max_length`.

    As TRL does: EOS is appended to the completion unless it ends with one, prompt and prompt + completion are
    tokenized separately and the completion starts where the two diverge. A long row loses tokens from the start
    of its prompt, so the completion, which carries the loss, survives (unless it alone is longer)."""
    completion = row["completion"]
    if not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    prompt_ids = tokenizer(row["prompt"]).input_ids
    ids = tokenizer(row["prompt"] + completion).input_ids
    n_prompt = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b),
                    min(len(prompt_ids), len(ids)))
    cut = max(0, len(ids) - max_length)
    return ids[cut:], max(0, n_prompt - cut)


def count_sketch(n_params: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket, sign) per parameter index: a CountSketch drawn only from (seed, n_params, dim).

    Why CountSketch rather than LESS's dense Rademacher/Gaussian matrix: it costs O(P) memory and one index_add_
    per row (a dense P x dim matrix for P = 2M, dim = 256 is 2 GB, and regenerating it block-wise per row is
    dim times more arithmetic than the sketch). Its inner-product estimate is unbiased with a variance no larger
    than a dense Gaussian projection's, (|a|^2 |b|^2 + <a, b>^2 - 2 sum a_i^2 b_i^2) / dim. A CPU generator
    seeded here gives the same draws in every process and shard."""
    g = torch.Generator().manual_seed(seed)
    bucket = torch.randint(dim, (n_params,), generator=g)
    sign = torch.randint(2, (n_params,), generator=g, dtype=torch.float32).mul_(2).sub_(1)
    return bucket, sign


def gradient_features(
    model_dir: str | Path,
    rows: Sequence[dict],
    dim: int = 256,
    seed: int = 0,
    max_length: int = 512,
    batch_size: int = 16,
    num_threads: int | None = None,
) -> np.ndarray:
    """(len(rows), dim) float32: each row's gradient of its completion-only mean loss, CountSketched to `dim`.

    Raw projections: LESS normalizes per-example gradients, and scoring does. The model runs in float32 and eval
    mode (no dropout). Rows of similar length share a batch of up to `batch_size`, fewer when the batch's per-row
    gradients (rows x parameters floats) would pass ~1 GB. `num_threads` sets torch's threads meanwhile (None:
    as they are); on a busy 2-core machine one thread was 5x faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or threads)
    try:
        return _features(model_dir, rows, dim, seed, max_length, batch_size)
    finally:
        torch.set_num_threads(threads)


def _features(model_dir: str | Path, rows: Sequence[dict], dim: int, seed: int, max_length: int,
              batch_size: int) -> np.ndarray:
    tokenizer = from_pretrained(AutoTokenizer, model_dir)
    # Eager attention: SDPA has no vmap batching rule on CPU (torch falls back to a slow loop, with a warning).
    model = from_pretrained(AutoModelForCausalLM, model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    sizes = [p.numel() for p in params.values()]
    bucket, sign = count_sketch(sum(sizes), dim, seed)
    # Each parameter tensor is sketched with its slice of the hash: no copy of all gradients into one vector.
    slices = dict(zip(params, zip(bucket.split(sizes), sign.split(sizes), strict=True), strict=True))
    batch_size = max(1, min(batch_size, 2**28 // sum(sizes)))

    def loss(params: dict, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # One row, as a batch of one: HF's loss is then that row's mean over its completion tokens.
        return functional_call(model, (params, frozen), (), {"input_ids": input_ids[None], "labels": labels[None]}).loss

    per_row_grads = vmap(grad(loss), in_dims=(None, 0, 0))
    encoded = [encode(tokenizer, row, max_length) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i][0]))  # little padding per batch
    out = np.zeros((len(rows), dim), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in batch)
        # Right padding needs no attention mask: causal attention never lets a real token see a later pad, and
        # pads carry label -100, so each row's loss is exactly its unpadded loss.
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        for j, i in enumerate(batch):
            ids, n_prompt = encoded[i]
            input_ids[j, :len(ids)] = torch.tensor(ids)
            labels[j, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        sketch = torch.zeros(len(batch), dim)
        for name, g in per_row_grads(params, input_ids, labels).items():
            b, s = slices[name]
            sketch.index_add_(1, b, g.reshape(len(batch), -1).mul_(s))
        out[batch] = sketch.numpy()
    return out
