"""A causal LM + prompt/completion rows -> the mean negative log-likelihood per completion token of each row.

Setlur et al. (2024, Figure 3) explain RFT's gain by likelihood: the policy's own correct solutions are easier for
the model to fit than the capable model's (D_syn), so training on them changes it less and generalizes better.
The experiment report measures that on the factory's own sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathfactory.tasks.models.influence import encode
from mathfactory.tasks.models.loading import from_pretrained


@torch.no_grad()
def completion_nll(model_dir: str | Path, rows: Sequence[dict], max_length: int = 512) -> list[float]:
    """Per row: mean NLL (nats) of the completion's tokens (EOS included) given the prompt, as SFT scores it."""
    model = from_pretrained(AutoModelForCausalLM, model_dir).eval()
    tokenizer = from_pretrained(AutoTokenizer, model_dir)
    out = []
    for row in rows:
        ids, n_prompt = encode(tokenizer, row, max_length)
        logits = model(torch.tensor([ids])).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        out.append(float(nll[max(n_prompt - 1, 0):].mean()))
    return out
