# Two commands set up a fresh machine: `make demo` and `make test`.
# Both install what they need first, idempotently (needs root).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup host models demo test bench proto clean

setup: host $(STAMP)

host:
	@bash scripts/setup-host.sh

# BCC's Python module comes from Debian; link just that package into the
# virtualenv rather than exposing all of Debian's dist-packages. Bytecode is
# compiled once, in parallel, after the install: where PYTHONDONTWRITEBYTECODE
# is set (these machines set it) nothing is cached otherwise, and every process
# that imports torch or flwr (a Flower ClientApp per message, each CLI run)
# would compile them again, 20 s each. One torch test file is Python 3.12 only.
PURELIB = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r requirements.lock
	# xgrammar asks for triton (1 GB) for its CUDA kernels; on CPU it never imports it
	$(PY) -m pip install -q --no-compile --no-deps xgrammar==0.2.8
	$(PY) -m pip install -q --no-deps -e .
	ln -sfn /usr/lib/python3/dist-packages/bcc "$(PURELIB)/bcc"
	$(PY) -m compileall -q -j0 -x 'py312_intrinsics' "$(PURELIB)" > /dev/null
	touch $@

# the agents' small models, built once per version of the builder (a few minutes on CPU)
models: setup
	$(VENV)/bin/bastion agents build-model

demo: setup models
	$(VENV)/bin/bastion demo

test: setup models
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

bench: setup
	$(PY) bench/sensor_overhead.py

# the committed gRPC stubs; tests/test_service.py checks they match the proto
proto: setup
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. console/proto/bastion.proto

clean:
	rm -rf $(VENV)
