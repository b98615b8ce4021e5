# Every target creates .venv on first use, so `make demo` and `make test` work from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export EDGECOMPRESS_CACHE ?= $(HOME)/.cache/edgecompress
RKNN_STAMP := $(EDGECOMPRESS_CACHE)/rknn-venv/bin/python
DEMO := out/demo
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo demo-detect test test-slow test-matrix test-fast bench fashion-mnist lint rknn readme clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.14.1 + torchvision 0.29.1 (the CPU-only 2.13 wheel cannot import torchvision)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	# The ultralytics extra (AGPL-3.0, optional) for tests/test_detect_ultralytics.py, without
	# its own requirements: they would add ~450 MB and opencv-python beside the headless
	# OpenCV, and its model code imports with what is installed above (11 MB, ~3 s).
	$(BIN)/pip install -q --no-deps ultralytics==8.4.190
	touch $(STAMP)

# rknn-toolkit2 pins old torch/numpy/onnx: it gets its own environment.
$(RKNN_STAMP): | $(STAMP)
	$(BIN)/edgecompress setup rknn

rknn: $(RKNN_STAMP)

demo: $(STAMP) $(RKNN_STAMP)
	$(BIN)/edgecompress example
	$(BIN)/edgecompress build $(EDGECOMPRESS_CACHE)/digits_resnet.pt \
		--arch edgecompress.testing.models:digits_resnet --recipe examples/digits.yaml \
		--target host --data $(EDGECOMPRESS_CACHE)/digits -o $(DEMO)/host --force --quiet --probe
	$(BIN)/edgecompress build $(EDGECOMPRESS_CACHE)/digits_resnet.pt \
		--arch edgecompress.testing.models:digits_resnet --recipe examples/digits.yaml \
		--target rk3588 --data $(EDGECOMPRESS_CACHE)/digits -o $(DEMO)/rk3588 --force --quiet
	@echo
	$(BIN)/edgecompress summary $(DEMO)/host/report.json $(DEMO)/rk3588/report.json

# The example detector (trained once, ~15 min, cached) pruned to 60% of its MACs, distilled
# from the original (FGD), INT8 QAT, ONNX Runtime and the RKNN simulator: out/demo-detect.
demo-detect: fashion-mnist $(RKNN_STAMP)
	$(BIN)/edgecompress detect -o out/demo-detect --force

# The suite without the tests marked slow (each a whole build or more: CI runs them too).
test: $(STAMP) $(RKNN_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP) $(RKNN_STAMP)
	$(BIN)/python -m pytest -q -m slow

# Every torchvision classifier through the default pipeline (hours on 2 cores).
test-matrix: $(STAMP) $(RKNN_STAMP)
	$(BIN)/python -m pytest -q -m matrix tests/test_torchvision_matrix.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not rknn"

# The benchmark data: Debian's dataset-fashion-mnist package (installed as root when
# missing, like .ci/run's openssh-server), written once as an image folder in the cache.
# Without root, `edgecompress example --dataset fashion-mnist` says how to get the files.
fashion-mnist: $(STAMP)
	@if [ ! -d $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	fi
	$(BIN)/edgecompress example --dataset fashion-mnist

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(RKNN_STAMP) $(BENCH_STAMP) fashion-mnist
	$(BIN)/python -m benchmarks.run

# The README's demo block, from a `make demo` of this checkout, stamped with the commit.
readme: $(STAMP) $(RKNN_STAMP)
	$(BIN)/python -m benchmarks.readme

lint: $(STAMP)
	$(BIN)/ruff check edgecompress tests benchmarks
	$(BIN)/ruff format --check edgecompress tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache
