# Fresh Debian machine as root: `make test` and `make demo` are all it takes.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip

.PHONY: venv install install-test zookeeper promtool check test models demo demo-cluster bench-store bench-serving bench-blade bench-sdk clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(VENV)/bin/activate

# The model server, the ZooKeeper backend and the control plane (`autoai up`: fastapi, uvicorn).
install: venv
	$(PIP) install -q -e '.[server,zk,control]'

install-test: venv
	$(PIP) install -q -e '.[test]'

# Only the `zookeeper` package: `zookeeperd` would start a daemon on 2181 and 8080.
zookeeper:
	@if [ ! -f /usr/share/java/zookeeper.jar ]; then \
		echo "installing Debian's zookeeper package"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q zookeeper; \
	fi

# promtool for tests/deploy (`promtool check config`, `check rules`). Debian's `prometheus` package
# has it, but installing the package would start a daemon: download the .deb and take out only
# /usr/bin/promtool (no maintainer scripts run). Best effort: without it the promtool tests skip.
PROMTOOL_DIR ?= $(HOME)/.cache/autoai/bin

promtool:
	@if command -v promtool >/dev/null 2>&1 || [ -x "$(PROMTOOL_DIR)/promtool" ]; then \
		:; \
	elif ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then \
		echo "promtool: no apt-get/dpkg-deb here; the promtool tests will skip"; \
	else \
		tmp=$$(mktemp -d); \
		if ( cd "$$tmp" && { apt-get download -q prometheus >/dev/null 2>&1 || \
				{ apt-get update -q >/dev/null 2>&1 && apt-get download -q prometheus >/dev/null 2>&1; }; } ) \
			&& dpkg-deb --fsys-tarfile "$$tmp"/prometheus_*.deb | tar -x -C "$$tmp" ./usr/bin/promtool \
			&& mkdir -p "$(PROMTOOL_DIR)" \
			&& install -m 0755 "$$tmp/usr/bin/promtool" "$(PROMTOOL_DIR)/promtool"; then \
			echo "promtool: $(PROMTOOL_DIR)/promtool"; \
		else \
			echo "promtool: could not get it from Debian's prometheus package; the promtool tests will skip"; \
		fi; \
		rm -rf "$$tmp"; \
	fi

check: install-test
	PATH=$(VENV)/bin:$$PATH scripts/check

test: install-test zookeeper promtool check
	AUTOAI_REQUIRE_ZK=1 $(VENV)/bin/pytest

# Example models into ~/.cache/autoai/models (all-MiniLM-L6-v2 with torch; a generated BERT-like
# stand-in when torch cannot be installed). Nothing large is written into the repository.
models: install
	-$(PIP) install -q -e '.[models]'
	$(PY) scripts/build_models.py

# The Whisper-shaped generation bundles (issue 20): tiny and base shapes with seeded weights, each
# export checked against torch, with Whisper's multilingual tokenizer.json; into
# ~/.cache/autoai/models/whisper-{tiny,base}.
whisper: install
	-$(PIP) install -q -e '.[models]'
	$(PY) scripts/build_models.py --only whisper

# Generation on the CPU through the SDK: iteration-level batching vs one request at a time, and
# the time to first token (benchmarks/generation/cpu.py).
bench-generation: install whisper
	$(PY) -m benchmarks.generation.cpu

# `autoai up` (left running, on 127.0.0.1:8080 or a free port; AUTOAI_DEMO_PORT to choose), the
# example model registered, deployed plain and blade, published 90/10, promoted, rolled back.
# `$(PY) scripts/demo.py --stop` stops what the last demo left running.
demo: install models bundles
	$(PY) scripts/demo.py

# A 3-node ZooKeeper ensemble on loopback (deploy/local-ensemble.sh, Debian's zookeeper package, no
# Docker), `autoai up` against all three nodes, the example model on two eas-server instances, SDK
# traffic while the ZooKeeper leader is killed by PID: calls sent and failed per phase (0 failed).
# Stops everything it started; `$(PY) scripts/demo_cluster.py --keep` leaves it running instead.
demo-cluster: install zookeeper models
	$(PY) scripts/demo_cluster.py

# Benchmarks run as modules of the `benchmarks` package (python -m), from the repository root.
bench-store: install-test zookeeper
	$(PY) -m benchmarks.store_propagation

# Serving (benchmarks/serving/README.md): both MiniLM models, ours / naive / MLServer over HTTP (wrk)
# and gRPC (h2load, apt-get installs nghttp2-client when missing), 3 interleaved rounds: ~26 min.
bench-serving: install models
	$(PIP) install -q -e '.[bench]'
	$(PY) -m benchmarks.serving.run

# SDK: route selection, overhead over a direct EasClient and throughput (needs tritonclient from the
# test extras), publish-to-first-call with 100 SDK processes on both backends.
bench-sdk: install-test zookeeper
	$(PY) -m benchmarks.sdk.route_selection
	$(PY) -m benchmarks.sdk.overhead
	$(PY) -m benchmarks.sdk.propagation --json benchmarks/sdk/results/propagation.json

bench-blade: install models
	$(PY) -m benchmarks.blade.cpu --full-length

# Pipeline bundles (scripts/build_bundles.py): an intent head and a slot-tagging head trained on
# all-MiniLM-L6-v2 (torch, CPU, seeded, ~2 min on 2 cores) from the utterances of scripts/data,
# written with their tokenizer, labels and held-back eval sets to ~/.cache/autoai/models/bundles.
.PHONY: bundles bench-pipeline whisper bench-generation
bundles: install
	-$(PIP) install -q -e '.[models]'
	$(PY) scripts/build_bundles.py

# The bundles' held-back accuracy (plain, blade with the task gate, int8), then text through the
# `pipeline` processor vs the same model fed pre-tokenized tensors (c=32 req/s, c=1 p50/p99): ~6 min.
bench-pipeline: install bundles
	$(PY) -m benchmarks.pipeline.accuracy
	$(PY) -m benchmarks.pipeline.throughput

# A hundred models (benchmarks/models/README.md): 100 versions of a small BERT on one eas-server
# --model-repository instance (memory per model, load/unload, Zipf traffic at c=32 against the same
# requests on one model) beside the same models as single-model processes: ~4 min.
.PHONY: bench-models
bench-models: install models
	$(PY) scripts/build_multimodel.py
	$(PY) -m benchmarks.models.run

# One hour at 70 % of the measured max QPS, a publish every 10 s, an instance SIGKILLed every 5 min,
# on a standalone ZooKeeper (Debian's package); SOAK_ARGS='--duration 120' for a smoke run.
.PHONY: soak
soak: install-test zookeeper
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
