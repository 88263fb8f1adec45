"""A saved model directory -> a loaded model or tokenizer, from any thread.

transformers builds a model on the meta device through process-wide state, so two threads loading at once (two
shards of a stage in the local runner's threads) crash with "Cannot copy out of meta tensor": loads take turns.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
LOAD_LOCK = threading.RLock()


def from_pretrained(cls: type[T], model_dir: str | Path, **kwargs: Any) -> T:
    """`cls.from_pretrained(model_dir, **kwargs)` (a model or tokenizer class), one load at a time per process."""
    with LOAD_LOCK:
        return cls.from_pretrained(model_dir, **kwargs)  # type: ignore[attr-defined]
