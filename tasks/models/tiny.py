"""Domain text -> a from-scratch tiny Llama policy: BPE tokenizer, seeded random init, TRL SFT on prompt/completion."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    set_seed,
)
from trl import SFTTrainer

from mathfactory.tasks.models.loading import from_pretrained

if TYPE_CHECKING:
    from mathfactory.tasks.models.config import TinyConfig

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE over `texts` with every digit its own token (so arithmetic is learnable digit by digit)."""
    tok = Tokenizer(models.BPE())
    # Digits first, so no merge can ever span two digits; byte-level after, so any text round-trips exactly.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,  # "12 + 3" must decode to itself, not "12+3"
    )


def init_model(tokenizer: PreTrainedTokenizerFast, cfg: TinyConfig) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by `cfg`; the same seed gives the same weights."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length,
        tie_word_embeddings=True,  # at this size the embedding is a large share of the parameters
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    set_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load(path: str | Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A saved tiny model and its tokenizer, to continue training (a base that pi_sft is fine-tuned from)."""
    return from_pretrained(LlamaForCausalLM, path), from_pretrained(PreTrainedTokenizerFast, path)


class LengthBatches(torch.utils.data.Sampler):
    """Batches of rows of near-equal length, in random order: little padding, and no stage runs in a streak.

    transformers' group_by_length sorts each mega-batch longest-first, so training sweeps from the longest toy
    stage to the shortest again and again; on toy data that sawtooth stalled learning. Here rows are sorted by
    length once per epoch (ties broken at random) and the resulting batches are shuffled."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = sorted(torch.randperm(len(self.lengths), generator=g).tolist(), key=self.lengths.__getitem__)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield from batches[b]


class _StepTimer(TrainerCallback):
    """Seconds per optimizer step: on a shared machine the median says what the hardware does, wall what it got."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._t)


def trl_defaults(out_dir: Path) -> dict[str, Any]:
    """TRL/transformers arguments every training run here shares; recipes and trl_args override any of them."""
    cpu = not torch.cuda.is_available()
    return {
        "output_dir": str(out_dir),
        # Near-equal lengths per batch halve the padding; LengthBatchedSFT does it without transformers'
        # longest-first sweep. {"train_sampling_strategy": "random"} pads random batches instead.
        "train_sampling_strategy": "group_by_length",
        "use_cpu": cpu,
        "bf16": False if cpu else torch.cuda.is_bf16_supported(),  # TRL resolves bf16 to True even on a CPU
        "fp16": False,
        "activation_checkpointing": False,  # TRL turns checkpointing on; at this size it only costs time
        "report_to": [],
        "save_strategy": "no",  # the only checkpoint is the final save
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


class LengthBatchedSFT(SFTTrainer):
    """TRL's SFTTrainer drawing batches from LengthBatches when train_sampling_strategy is group_by_length."""

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        ds = self.train_dataset if train_dataset is None else train_dataset
        return LengthBatches([len(ids) for ids in ds["input_ids"]], self.args.train_batch_size, self.args.seed)


def build_trainer(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    rows: list[dict[str, str]],
    cfg: TinyConfig,
    out_dir: Path,
) -> SFTTrainer:
    """A TRL SFTTrainer over prompt/completion rows, loss on the completion only, set up for a CPU."""
    import datasets
    from transformers import PrinterCallback
    from trl import SFTConfig

    if len(rows) < cfg.batch_size:
        raise ValueError(f"SFT needs at least one batch of {cfg.batch_size} rows, got {len(rows)} training rows")
    args = {
        **trl_defaults(out_dir),
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "warmup_steps": cfg.warmup_ratio,  # transformers 5 reads a float < 1 as a fraction of the steps
        "lr_scheduler_type": "cosine",
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "max_length": cfg.max_length,
        "completion_only_loss": True,
        "logging_steps": 0.05,  # a ratio: 20 losses over however many steps (trl_args may set epochs instead)
    }
    # trl_args are SFTConfig keywords passed through verbatim; they win over the defaults above.
    sft_config = SFTConfig(**{**args, **cfg.trl_args})
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # five progress bars for preprocessing a few thousand rows are noise
    try:
        trainer = LengthBatchedSFT(
            model=model,
            args=sft_config,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    trainer.remove_callback(PrinterCallback)  # the loss curve is returned in the metrics, not printed
    return trainer


def fit(trainer: Trainer, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> dict[str, Any]:
    """Train, save model + tokenizer to `out_dir`, and return what every training marker records."""
    started, timer = time.perf_counter(), _StepTimer()
    trainer.add_callback(timer)
    result = trainer.train()
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    history = trainer.state.log_history
    losses = [e["loss"] for e in history if "loss" in e]
    runtime = result.metrics["train_runtime"]
    # SFT counts non-padding tokens in the trainer state; DPO logs its own `num_tokens`.
    tokens = trainer.state.num_input_tokens_seen or max((e.get("num_tokens", 0) for e in history), default=0)
    return {
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "steps": trainer.state.global_step,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "losses": losses,
        "train_tokens": int(tokens),
        "train_tokens_per_s": tokens / runtime,
        "wall_s": time.perf_counter() - started,
        "train_s": runtime,
        "median_step_s": statistics.median(timer.seconds),
        "threads": torch.get_num_threads(),
    }


def sft(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    rows: list[dict[str, str]],
    cfg: TinyConfig,
    out_dir: Path,
) -> dict[str, Any]:
    """SFT on prompt/completion rows (loss on the completion only); saves model + tokenizer to `out_dir`."""
    trainer = build_trainer(model, tokenizer, rows, cfg, Path(out_dir))
    # TRL truncates silently; a truncated row loses its answer and EOS, so count them for the caller.
    lengths = [len(tokenizer(r["prompt"] + r["completion"]).input_ids) for r in rows]
    return {
        "train_rows": len(rows),
        "truncated_rows": sum(n > cfg.max_length for n in lengths),
        "max_row_tokens": max(lengths),
        **fit(trainer, tokenizer, Path(out_dir)),
    }
