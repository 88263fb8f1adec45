# syntax=docker/dockerfile:1
# CPU worker image: the flows, the tasks and the CPU stack, every version pinned by constraints.txt.
# Build from the repository root: docker build -f docker/cpu.Dockerfile -t mathfactory-cpu .
FROM python:3.11-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MATHFACTORY_HOME=/opt/mathfactory PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30

# tini as PID 1: trainers and the verifier's judge run in child processes that must be reaped and signalled.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --user-group mathfactory

WORKDIR /opt/mathfactory
COPY pyproject.toml constraints.txt README.md ./

# Dependencies before the code, so an edit to flows/ or tasks/ does not reinstall 2 GB of wheels.
# torch first, the CPU wheel at the locked version, from PyTorch's CPU index only (the PyPI wheel is a CUDA
# build of several GB); 2.13.0+cpu satisfies the lock's torch==2.13.0, so the next step keeps it.
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu "$(grep -i '^torch==' constraints.txt)"
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["scale"]))' > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt && pip check

COPY flows ./flows
COPY tasks ./tasks
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/mathfactory-entrypoint
RUN pip install --no-deps -c constraints.txt . && rm -rf build *.egg-info \
    && mkdir lake && chown mathfactory:mathfactory lake

# Never root. The default lake (./lake) is the one writable directory here: mount a volume on it, or use s3://.
# Caches and PREFECT_HOME go under the user's home.
USER mathfactory
ENTRYPOINT ["/usr/bin/tini", "--", "mathfactory-entrypoint"]
CMD ["--help"]
