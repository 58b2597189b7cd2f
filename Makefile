# Two commands set everything up on a fresh machine:
#   make demo   build the venv, install kwskit, run the main job on the built-in data
#               (ARGS="--set train.threads=1" passes options to it)
#   make test   same venv plus test dependencies, run the test suite
#   make web    vendor onnxruntime-web for `kwskit serve` (npm; kwskit serve does it when missing)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# test workers (pytest-xdist), one torch thread each: 2 halves the suite's time on 2 cores
TEST_JOBS ?= 2

.PHONY: demo test venv web clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,onnx,compress,test,tracking]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m kwskit.demo $(ARGS)

test: venv
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist worksteal tests

web: venv
	$(BIN)/python -m kwskit.web.build

clean:
	rm -rf $(VENV) runs .cache
