# The README's two commands: `make demo` (the main job on the embedded default) and `make test`.
# Each builds .venv from nothing when it is missing, pinned by constraints.txt.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BASE   := $(VENV)/.base-stamp
PRESET ?= toy
LAKE   ?= ./lake

# Runtime state stays inside the checkout (and out of git): no ~/.prefect, no hub calls.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-faults lint bench lock clean

# The demo needs only the base set; the tests also need the test and scale (Ray, Kubernetes) extras.
$(BASE): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $(BASE)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,scale]'
	touch $(STAMP) $(BASE)

demo: $(BASE)
	$(VENV)/bin/mathfactory run --preset $(PRESET) --lake $(LAKE)

test: $(STAMP)
	$(PY) -m ruff check flows tasks tests benchmarks
	$(PY) -m pytest -q

# The slow trials (pytest marker `slow`: fault trials, training on the gpu pool / Ray, the deployed nightly); `-m` here overrides the `not slow` in pyproject's addopts.
test-faults: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[test,scale]' 'torch==2.13.0' 'boto3==1.43.117'
	.lock-venv/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints.txt.new
	rm -rf .lock-venv && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(LAKE) .prefect .pytest_cache
