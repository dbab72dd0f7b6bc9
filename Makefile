# Every target creates/updates .venv first, so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages: the GigE Vision camera simulator + Aravis introspection data (camera tests),
# the headers PyGObject builds against, systemd-analyze (unit tests), and chromium (the web UI's
# browser tests drive it through Playwright).
APT_PACKAGES := aravis-tools gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config systemd chromium

.PHONY: venv system-deps demo test test-slow test-gpu-sim lint bench bench-throughput gpu-resources gpu-check gpu-wheels clean clean-kernel-cache

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	  echo "note: missing apt packages ($$missing) and no root: camera and browser tests will be skipped"; exit 0; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	  || echo "note: apt-get install failed: camera and browser tests will be skipped"

$(STAMP): pyproject.toml bench/pyproject.toml
	$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plc,cluster]'
	# The station benchmark is a distribution of its own (bench/), not part of the daemon.
	$(PY) -m pip install -q --no-deps -e ./bench
	# torch for training/export: pin the CPU build (an unpinned torch pulls a multi-GB CUDA build).
	$(PY) -m pip install -q 'torch==2.13.0' && $(PY) -m pip install -q -e '.[train]'
	-$(PY) -m pip install -q -e '.[aravis]' || echo "note: PyGObject did not build: camera tests will be skipped"
	# fast-slic's sdist imports cython at build time: build it without isolation.
	-$(PY) -m pip install -q cython wheel && $(PY) -m pip install -q --no-build-isolation fast-slic \
	  || echo "note: fast-slic did not build: segment.classical.slic.implementation fast_slic unavailable"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/inspectd demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --doctest-modules tests inspectd kernels

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The CUDA kernels on numba's CUDA simulator (no GPU needed; small images, slow). The GPU
# benchmark's own simulator run is in `make test` (tests/bench/test_gpu_bench.py).
test-gpu-sim: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m gpu tests/kernels tests/unet/test_engine_device.py
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q --doctest-modules kernels/gpu_clahe.py kernels/gpu_threshold.py kernels/gpu_guided.py \
		kernels/gpu_tiles.py

lint: $(STAMP)
	$(VENV)/bin/ruff check inspectd kernels tests bench

bench: $(STAMP)
	$(PY) bench/cpu_kernels.py

# Registers, shared memory, spills, FP64 and occupancy of every CUDA kernel, from the compiler (no GPU).
gpu-resources: $(STAMP)
	$(PY) bench/gpu_resources.py --json bench/results/gpu_resources.json

# The whole station: daemon pipeline per engine beside the seed-style pipeline (minutes).
bench-throughput: $(STAMP)
	$(PY) bench/throughput.py --frames 30 --size 2560x1920 --rate 10 --engines classical,unet \
	  --json bench/results/throughput.json

# Every GPU check in one run on this machine's NVIDIA GPU (the kernel table, the CUDA tests, the
# station on the GPU beside the CPU, compute-sanitizer): files in gpu-check-results/.
gpu-check: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_check.sh gpu-check-results

# For scripts/gpu_check.sh on an offline GPU machine (no package registry, Python 3.12, with
# numba, numba-cuda, CuPy, OpenCV, ONNX Runtime and pytest but without the daemon's pydantic,
# pyzmq and watchdog): those three as wheels, with their dependencies, into .gpu-wheels/; copy that
# folder to the GPU machine with the repository.
GPU_MACHINE_WHEELS := pydantic pyzmq watchdog
gpu-wheels: $(STAMP)
	rm -rf .gpu-wheels/wheels && mkdir -p .gpu-wheels/wheels
	$(PY) -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .gpu-wheels/wheels $(GPU_MACHINE_WHEELS)
	printf '%s\n' $(GPU_MACHINE_WHEELS) > .gpu-wheels/requirements.txt
	@du -sh .gpu-wheels

# numba caches compiled kernels beside their sources and checks only the file of each cached
# function: a kernel that calls a helper from another module (kernels/pores.py calls
# kernels/regions.py's) keeps its old compile after only the helper's file changed.
clean-kernel-cache:
	find kernels inspectd -name '*.nbi' -delete -o -name '*.nbc' -delete

clean: clean-kernel-cache
	rm -rf $(VENV) build *.egg-info .pytest_cache
