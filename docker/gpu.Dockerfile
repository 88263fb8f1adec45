# syntax=docker/dockerfile:1
# GPU worker image (the `gpu` Kubernetes pool): vLLM, and the flows with the trainer stack on CUDA torch.
# Build from the repository root: docker build -f docker/gpu.Dockerfile -t mathfactory-gpu .
#
# Two virtualenvs, because vLLM and the locked CPU set cannot share one: vllm 0.33 pins torch==2.14.0,
# transformers<5.21 and fastapi<0.137, while constraints.txt has torch 2.13.0 and transformers 5.23.0 and
# prefect 3.8.8 itself requires fastapi>=0.139. So:
#   /opt/vllm  the `gpu` extra resolved alone: vLLM chooses its own torch/transformers (`vllm serve`, and
#              `/opt/vllm/bin/python` for an offline engine run as a subprocess); mathfactory without deps.
#   /opt/venv  the flows, Prefect and the trainer stack (TRL, accelerate) from constraints.txt, exactly as CI
#              runs them, except that torch==2.13.0 comes as PyPI's CUDA build (plus the nvidia-* wheels it
#              pins itself) instead of the CPU wheel. `prefect flow-run execute` runs here.
# Neither install sees the other's pins, so neither can move the other's torch.

# torch and vLLM wheels bring their own CUDA runtime; the base adds the driver hooks (NVIDIA_* env) and
# cuda-compat. The node's driver must support the wheels' CUDA version.
ARG CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_VERSION=0.13.9
FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM ${CUDA_BASE}
ARG VLLM_VERSION=0.33.0
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MATHFACTORY_HOME=/opt/mathfactory \
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
    UV_NO_CACHE=1 UV_LINK_MODE=copy UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed \
    PATH=/opt/venv/bin:$PATH

# tini: PID 1 that reaps trainer and judge subprocesses. gcc + libc headers: Triton (under torch.compile and
# vLLM) compiles small launchers at first use.
RUN apt-get update && apt-get install -y --no-install-recommends tini ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group mathfactory
COPY --from=uv /uv /usr/local/bin/uv
# CPython 3.11, the version constraints.txt was locked on (Ubuntu 24.04 ships 3.12).
RUN uv python install 3.11 && uv venv --python 3.11 /opt/vllm && uv venv --python 3.11 /opt/venv

WORKDIR /opt/mathfactory
COPY pyproject.toml constraints.txt README.md ./

# Layer 1: the `gpu` extra, alone (no constraints.txt). What it resolved is kept beside it for the record.
RUN /opt/venv/bin/python -c 'import tomllib; \
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))' \
      > /tmp/gpu-requirements.txt \
    && uv pip install --python /opt/vllm/bin/python -r /tmp/gpu-requirements.txt "vllm==${VLLM_VERSION}" \
    && uv pip check --python /opt/vllm/bin/python \
    && uv pip freeze --python /opt/vllm/bin/python > /opt/vllm/resolved.txt

# Layer 2: the flows' dependencies and the scale extra, every version from constraints.txt.
RUN /opt/venv/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["scale"]))' > /tmp/requirements.txt \
    && uv pip install --python /opt/venv/bin/python -c constraints.txt -r /tmp/requirements.txt \
    && uv pip check --python /opt/venv/bin/python

COPY flows ./flows
COPY tasks ./tasks
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/mathfactory-entrypoint
# mathfactory itself into both envs without deps: in /opt/vllm only its pure modules (engine request/response
# mappings) are meant to be imported.
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
    && uv pip install --python /opt/vllm/bin/python --no-deps . \
    && ln -s /opt/vllm/bin/vllm /usr/local/bin/vllm \
    && rm -rf build *.egg-info && mkdir lake && chown mathfactory:mathfactory lake

USER mathfactory
ENTRYPOINT ["/usr/bin/tini", "--", "mathfactory-entrypoint"]
CMD ["--help"]
