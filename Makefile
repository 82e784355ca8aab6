# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv/.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The stamp names a hash of everything that decides what is installed, so a second run installs nothing
# and a change to a pin reinstalls.
INSTALL_INPUTS := requirements.txt requirements-ros.txt requirements-dev.txt requirements-nodeps.txt setup.py
STAMP := $(VENV)/.installed-$(shell cat $(INSTALL_INPUTS) | sha256sum | cut -c1-16)
# DDS stays on loopback for every process these targets start (Kilted reads the first, Humble the second).
ROS_LOOPBACK := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOCALHOST_ONLY=1
DATA ?=

.PHONY: demo test bench venv clean-venv
venv: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-ros.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(ROS_LOOPBACK) $(PY) -m vl2spike_ros.demo $(if $(DATA),--data $(DATA))

test: $(STAMP)
	$(ROS_LOOPBACK) $(PY) -m pytest -q test

# The full benchmark (README, "Benchmark"); BENCH_ARGS=--quick for the few-minute version. ROUTE_DATA
# calibrates the route-shaped map descriptors (docs/map_scale.md).
BENCH_OUT ?= benchmark_results
BENCH_ARGS ?=
ROUTE_DATA ?= ../shared/data/nordland64
bench: $(STAMP)
	$(ROS_LOOPBACK) $(VENV)/bin/vl2spike benchmark --out $(BENCH_OUT) --threads 1 --route-data $(ROUTE_DATA) $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
