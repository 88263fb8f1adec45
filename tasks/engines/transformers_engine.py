"""Prompts -> sampled completions from a Hugging Face causal LM: length-sorted batches, prefill, a KV-cache decode loop."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import Cache

from mathfactory.tasks.engines.base import Completion, SamplingParams, request_seeds
from mathfactory.tasks.engines.kv_cache import (
    RAGGED_SDPA,
    PreallocatedLayer,
    RowsView,
    full_attention_layers,
    new_cache,
    row_groups,
)
from mathfactory.tasks.models.loading import from_pretrained

# Once this share of a batch has finished, its rows are dropped: the copy costs about one decode step.
COMPACT_FRACTION = 1 / 8
# Nucleus sampling looks for top_p's mass among this many most likely tokens before sorting the vocabulary.
TOP_P_HEAD = 64


@dataclass(frozen=True)
class _Row:
    index: int  # position in the flattened prompts x n output
    prompt_ids: list[int]
    key: int  # the row's random stream: its samples depend on nothing else in the call


@dataclass
class _Batch:
    """What decoding needs after a prefill."""

    cache: Cache
    # Over prompt_len + max_new_tokens positions: (rows, L) 1/0, or (rows, 1, 1, L) additive 0/-inf.
    mask: torch.Tensor
    positions: torch.Tensor  # (rows, 1): position id of the last token fed
    logits: torch.Tensor  # (rows, vocab): next-token logits
    prompt_len: int
    pads: list[int]  # left padding of each row

    def select(self, index: torch.Tensor) -> None:
        """Keep (or repeat) rows by index: drops finished rows, or copies a prefilled prompt to its n samples."""
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        self.pads = [self.pads[i] for i in index.tolist()]


def row_keys(prompts: Sequence[str], n: int, seed: int) -> list[int]:
    """One 64-bit key per (prompt, sample), from the per-prompt seeds every engine uses (`request_seeds`):
    a prompt samples the same in any batch or shard, and a prompt repeated in one call gets fresh samples."""
    return [
        int.from_bytes(hashlib.blake2b(f"{prompt_seed}\0{j}".encode(), digest_size=8).digest(), "little")
        for prompt_seed in request_seeds(prompts, seed)
        for j in range(n)
    ]


def uniforms(keys: np.ndarray, step: int) -> np.ndarray:
    """Counter-based uniforms in [0, 1): splitmix64 of (key, step), so no generator state is shared by rows."""
    with np.errstate(over="ignore"):
        z = keys + np.uint64(step + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) logits -> (rows,) token ids: argmax, or inverse-CDF sampling with one uniform per row."""
    if params.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    order = None
    if params.top_p < 1:
        # A trained model's top few dozen tokens nearly always hold top_p of the mass; sorting the whole
        # vocabulary every step cost ~12% of a decode step here, so it is the fallback.
        probs_all = probs
        probs, order = probs_all.topk(min(TOP_P_HEAD, probs.shape[-1]), dim=-1)
        if bool((probs.sum(-1) < params.top_p).any()):
            probs, order = probs_all.sort(dim=-1, descending=True)
        # Keep the smallest head whose mass reaches top_p; the first token always stays.
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= params.top_p, 0.0)
    cdf = probs.double().cumsum(-1)  # float64: rows' totals stay exact enough that u < 1 never overshoots
    total = cdf[:, -1:]
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    picked = torch.searchsorted(cdf, target, right=True)  # first token whose cdf exceeds the target: p > 0
    return picked.squeeze(-1) if order is None else order.gather(-1, picked).squeeze(-1)


class TransformersEngine:
    """A `save_pretrained` model directory (model + tokenizer) behind the Engine protocol, on CPU or one GPU.

    Rows (prompt x sample) are sorted by length and cut into batches of `batch_size`; each batch is prefilled
    and decoded by a plain loop over the model's forward. A row samples from its own counter-based stream
    keyed by (seed, prompt, sample index), so its completion is the same whatever else is in the call.
    """

    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 64,
        device: str = "cpu",
        dtype: str = "float32",
        num_threads: int | None = 1,
        share_prefill: bool = True,
    ):
        """`num_threads`: torch's intra-op threads while generating (restored after; None: leave torch's). A
        small model's decode ops are too small to split, and split ops stall whenever another process holds a
        core (2 threads on a busy 2-core box decoded 5-30x slower): run shards side by side instead."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.share_prefill = share_prefill  # False: prefill every sample's row (the baseline benchmarks compare)
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype must name a torch dtype such as 'float32' or 'bfloat16', got {dtype!r}")
        self.device = torch.device(device)
        self.tokenizer = from_pretrained(AutoTokenizer, model_dir)
        self.model = from_pretrained(AutoModelForCausalLM, model_dir, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        if not eos:
            raise ValueError(f"{model_dir}: neither the tokenizer nor the generation config names an EOS token")
        self.eos_ids = frozenset(eos)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        if full_attention_layers(self.model.config) and self.model.config._attn_implementation == "sdpa":
            self.model.set_attn_implementation(RAGGED_SDPA)
        # With it, decode steps also pass a ready 4D additive mask sliced per step: HF skips rebuilding the
        # mask, and SDPA on CPU runs faster with a float mask than with a boolean one.
        self.ragged = self.model.config._attn_implementation == RAGGED_SDPA
        self._stop_flags: dict[tuple[str, ...], torch.Tensor] = {}

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        if any(not s for s in params.stop):
            raise ValueError("an empty stop string would end every completion at once")
        prompts = list(prompts)
        if not prompts:
            return []
        encoded = self.tokenizer(prompts).input_ids
        for prompt, ids in zip(prompts, encoded, strict=True):
            if not ids:
                raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
        per_prompt = 1 if params.greedy else params.n  # greedy samples are copies: decode one
        keys = row_keys(prompts, per_prompt, params.seed)
        rows = [_Row(i, encoded[i // per_prompt], key) for i, key in enumerate(keys)]
        rows.sort(key=lambda r: -len(r.prompt_ids))  # similar lengths share a batch: less padding
        out: list[Completion | None] = [None] * len(rows)
        threads = torch.get_num_threads()  # per thread (OpenMP): shards in threads each set their own
        torch.set_num_threads(self.num_threads or threads)
        try:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                for row, (token_ids, reason) in zip(batch, self._generate_batch(batch, params), strict=True):
                    out[row.index] = self._completion(token_ids, reason, params.stop)
        finally:
            torch.set_num_threads(threads)
        if params.greedy:
            return [[c] * params.n for c in out]
        return [out[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    @torch.inference_mode()
    def _generate_batch(self, rows: list[_Row], params: SamplingParams) -> list[tuple[list[int], str]]:
        # The n samples of a prompt are neighbours (a stable sort by length): prefill each distinct prompt once and
        # copy its KV cache rows, instead of computing the same prefix n times (credit continues every step
        # prefix M times).
        unique, index = [], []
        for r in rows:
            if not unique or not self.share_prefill or r.prompt_ids != unique[-1]:
                unique.append(r.prompt_ids)
            index.append(len(unique) - 1)
        batch = self._prefill(unique, params.max_new_tokens)
        if len(unique) < len(rows):
            batch.select(torch.tensor(index, device=self.device))
        # A row stops at the model's last position: its completion ends early with finish_reason "length".
        room = [self.max_positions - len(r.prompt_ids) if self.max_positions else params.max_new_tokens for r in rows]
        return self._decode(batch, np.array([r.key for r in rows], dtype=np.uint64), params, room)

    def _prefill(self, prompt_ids: list[list[int]], max_new_tokens: int) -> _Batch:
        prompt_len, rows = max(map(len, prompt_ids)), len(prompt_ids)
        pads = [prompt_len - len(p) for p in prompt_ids]
        ids = torch.full((rows, prompt_len), self.pad_id, dtype=torch.long)
        mask = torch.ones((rows, prompt_len + max_new_tokens), dtype=torch.long)
        for i, p in enumerate(prompt_ids):  # left padding: every row's next token sits in the last column
            ids[i, pads[i] :] = torch.tensor(p)
            mask[i, : pads[i]] = 0
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask[:, :prompt_len].cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.model.config, rows, prompt_len + max_new_tokens)
        # Prefill each group of similar lengths apart, so no group computes over another's padding.
        grouped = isinstance(cache.layers[0], PreallocatedLayer)
        logits = []
        for a, b, start in row_groups(pads) if grouped else [(0, rows, 0)]:
            part = Cache(layers=[RowsView(layer, a, b, start) for layer in cache.layers]) if grouped else cache
            out = self.model(
                input_ids=ids[a:b, start:], attention_mask=mask[a:b, start:prompt_len],
                position_ids=positions[a:b, start:], past_key_values=part, use_cache=True, logits_to_keep=1,
            )
            logits.append(out.logits[:, -1])
        if grouped:
            for layer in cache.layers:
                layer.set_length(prompt_len)
        if self.ragged:
            blocked = torch.finfo(self.model.dtype).min
            mask = torch.zeros(mask.shape, dtype=self.model.dtype, device=self.device).masked_fill(mask == 0, blocked)
            mask = mask[:, None, None, :]
        return _Batch(cache, mask, positions[:, -1:], torch.cat(logits), prompt_len, pads)

    def _decode(self, batch: _Batch, keys: np.ndarray, params: SamplingParams,
                room: list[int]) -> list[tuple[list[int], str]]:
        """Sample until every row has hit EOS, a stop string, max_new_tokens or its `room` (tokens left before the
        model's last position); finished rows are dropped."""
        tokens: list[list[int]] = [[] for _ in keys]
        reasons = ["length"] * len(keys)
        live = list(range(len(keys)))  # the original row at each position of the (shrinking) batch
        done: set[int] = {row for row, left in enumerate(room) if left < 1}  # a prompt that fills the model
        may_stop = self._stop_candidates(params.stop) if params.stop else None
        window = 4 * max(map(len, params.stop), default=0) + 2  # tokens that can hold a stop string (UTF-8: <= 4 each)
        extra = {"row_groups": row_groups(batch.pads)} if self.ragged else {}
        for step in range(params.max_new_tokens):
            u = None if params.greedy else torch.from_numpy(uniforms(keys[live], step)).to(self.device)
            next_ids = sample(batch.logits, params, u)
            check = may_stop[next_ids].tolist() if may_stop is not None else None
            to_check = []
            for pos, token in enumerate(next_ids.tolist()):
                row = live[pos]
                if row in done:
                    continue
                tokens[row].append(token)
                if token in self.eos_ids:
                    reasons[row] = "stop"
                    done.add(row)
                elif check is not None and check[pos]:
                    to_check.append(row)
                if len(tokens[row]) >= room[row]:
                    done.add(row)  # "length" unless the stop check below finds a stop string
            if to_check:
                texts = self.tokenizer.batch_decode(
                    [tokens[r][-window:] for r in to_check], skip_special_tokens=True,
                    clean_up_tokenization_spaces=False,
                )
                for row, text in zip(to_check, texts, strict=True):
                    if any(s in text for s in params.stop):
                        reasons[row] = "stop"
                        done.add(row)
            if len(done) == len(keys) or step == params.max_new_tokens - 1:
                break
            if len(live) - sum(r not in done for r in live) >= max(1, COMPACT_FRACTION * len(live)):
                keep = [pos for pos, r in enumerate(live) if r not in done]
                index = torch.tensor(keep, device=self.device)
                batch.select(index)
                next_ids, live = next_ids[index], [live[pos] for pos in keep]
                extra = {"row_groups": row_groups(batch.pads)} if self.ragged else {}
            batch.positions = batch.positions + 1
            out = self.model(
                input_ids=next_ids[:, None], attention_mask=batch.mask[..., : batch.prompt_len + step + 1],
                position_ids=batch.positions, past_key_values=batch.cache, use_cache=True, **extra,
            )
            batch.logits = out.logits[:, -1]
        return list(zip(tokens, reasons, strict=True))

    def _stop_candidates(self, stop: tuple[str, ...]) -> torch.Tensor:
        """Per vocabulary id: can this token complete one of `stop`? Only those rows get the (slower) text check.

        A token completes a stop string only if its text holds the string's last character; a token that
        decodes alone to U+FFFD (part of a multi-byte character) may too. SentencePiece drops a lone token's
        leading space, so a stop string ending in whitespace checks every token.
        """
        if stop in self._stop_flags:
            return self._stop_flags[stop]
        last_chars = {s[-1] for s in stop} | {"\ufffd"}
        vocab = len(self.tokenizer)
        pieces = self.tokenizer.batch_decode([[i] for i in range(vocab)], clean_up_tokenization_spaces=False)
        every = any(c.isspace() for c in last_chars)
        flags = [every or any(c in piece for c in last_chars) for piece in pieces]
        flags += [True] * (self.model.config.vocab_size - vocab)  # ids the model has and the tokenizer lacks
        self._stop_flags[stop] = torch.tensor(flags, device=self.device)
        return self._stop_flags[stop]

    def _completion(self, token_ids: list[int], reason: str, stop: tuple[str, ...]) -> Completion:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
        if cuts:  # a stop string the per-step check missed still ends the text
            text, reason = text[: min(cuts)], "stop"
        return Completion(text=text, n_tokens=len(token_ids), finish_reason=reason)
