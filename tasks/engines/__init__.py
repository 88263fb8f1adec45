"""Engine options (one small config per backend, picked by `kind`) -> a live Engine. Backends import lazily."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.engines.base import Engine


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["transformers"] = "transformers"
    batch_size: int = Field(64, ge=1, description="Sequences per generation batch.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: str = Field("float32", description="torch dtype of the weights.")
    num_threads: int | None = Field(1, ge=1, description="torch threads while generating (None: torch's default).")


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["vllm"] = "vllm"
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is split over.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may take.")
    max_model_len: int | None = Field(None, ge=1, description="Context length (None: the model's).")
    dtype: str = Field("auto", description="Weights dtype.")


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai"] = "openai"
    base_url: str = Field("http://127.0.0.1:8000/v1", description="An OpenAI-compatible server (vllm serve, SGLang, ...).")
    model: str = Field("default", description="The served model's name.")
    mode: Literal["completions", "chat"] = Field("completions", description="Endpoint: raw completions or chat.")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(60, gt=0, description="Seconds per request before it is retried.")
    max_retries: int = Field(5, ge=0, description="Retries on 429, 5xx, timeouts and connection errors.")
    concurrency_limit: str | None = Field(
        None, description="A Prefect global concurrency limit (`prefect gcl create NAME --limit N`) of which each "
        "request holds a slot while in flight, so all workers of all runs together keep at most N requests in "
        "flight. None: only max_concurrency, per engine.")
    rate_limit: str | None = Field(
        None, description="A Prefect limit with slot decay (`prefect gcl create NAME --limit N "
        "--slot-decay-per-second R`) of which each request takes a slot as it is sent: R requests/s on average "
        "across all workers, bursts of N. None: no rate limit.")


EngineOptions = Annotated[TransformersOptions | VLLMOptions | OpenAIOptions, Field(discriminator="kind")]


def model_name(options: EngineOptions, model_dir: str | Path | None) -> str:
    """What wrote a completion: the served model for HTTP engines, else the model directory."""
    return f"{options.base_url}#{options.model}" if isinstance(options, OpenAIOptions) else str(model_dir)


def local_model(options: EngineOptions, model_dir: Callable[[], Path]) -> Path | None:
    """The local model directory an in-process engine loads (found only then); None for an HTTP engine, which
    uses the model its server serves."""
    return None if isinstance(options, OpenAIOptions) else model_dir()


def load_engine(options: EngineOptions, model_dir: str | Path | None = None, seed: int = 0) -> Engine:
    """A live engine; `model_dir` is the local model for in-process engines (HTTP engines use the served one)."""
    if isinstance(options, OpenAIOptions):
        from mathfactory.tasks.engines.openai_engine import OpenAIEngine
        from mathfactory.tasks.engines.quota import Quota

        return OpenAIEngine(options.base_url, options.model, mode=options.mode, max_concurrency=options.max_concurrency,
                            timeout_s=options.timeout_s, max_retries=options.max_retries,
                            quota=Quota(options.concurrency_limit, options.rate_limit))
    if model_dir is None:
        raise ValueError(f"the {options.kind} engine needs a model directory")
    if isinstance(options, VLLMOptions):
        from mathfactory.tasks.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, tensor_parallel_size=options.tensor_parallel_size,
                          gpu_memory_utilization=options.gpu_memory_utilization,
                          max_model_len=options.max_model_len, dtype=options.dtype, seed=seed)
    from mathfactory.tasks.engines.transformers_engine import TransformersEngine

    return TransformersEngine(model_dir, batch_size=options.batch_size, device=options.device, dtype=options.dtype,
                              num_threads=options.num_threads)
