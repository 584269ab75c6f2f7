# The two commands of the README, and their parts.
#   make bench   set up, build, train the example, benchmark against the notebook versions
#   make test    set up, build, run every test (pytest, C unit tests plain and under
#                ASan/UBSan, the LibTorch example, the C API's fuzz target) and build the
#                docs
PYTHON ?= python3
# (evaluated when used: setup may have just installed ninja)
CTEST_FLAGS = $(if $(shell command -v ninja),-G Ninja,) -DGF_WITH_CUDA=OFF \
              -DPython3_EXECUTABLE=$(shell command -v $(PYTHON))

.PHONY: setup install test pytest ctest fuzz docs bench clean

setup:
	PYTHON=$(PYTHON) ./scripts/setup.sh

# Builds the extension against the installed torch (setup installed its dependencies).
# GF_WITH_CUDA: AUTO builds the CUDA kernels where nvcc exists and torch has CUDA; the
# test path asks for them wherever nvcc exists (ON), also with a CPU torch, so that a
# compile error in cuda/ fails `make test` (CI).  `make install GF_WITH_CUDA=OFF` for none.
# More CMake settings through CMAKE_ARGS (e.g. CMAKE_ARGS=-DGF_PTXAS_VERBOSE=ON).
GF_WITH_CUDA ?= AUTO
TEST_WITH_CUDA ?= $(if $(shell command -v nvcc),ON,AUTO)
test pytest: GF_WITH_CUDA = $(TEST_WITH_CUDA)

install: setup
	$(PYTHON) -m pip install --no-build-isolation --no-deps -C cmake.define.GF_WITH_CUDA=$(GF_WITH_CUDA) .

# in parallel where pytest-xdist is installed
PYTEST_JOBS = $(shell $(PYTHON) -c "import xdist" >/dev/null 2>&1 && echo "-n 4")

pytest: install
	$(PYTHON) -m pytest -q $(PYTEST_JOBS) tests

# C unit tests and the LibTorch example (build/ctest), and the C core's tests again
# under AddressSanitizer + UndefinedBehaviorSanitizer (build/ctest-sanitize).
ctest: setup
	cmake -S . -B build/ctest $(CTEST_FLAGS) -DGF_BUILD_TESTS=ON -DGF_BUILD_EXAMPLES=ON
	cmake --build build/ctest
	ctest --test-dir build/ctest --output-on-failure
	cmake -S . -B build/ctest-sanitize $(CTEST_FLAGS) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	      -DGF_BUILD_TORCH=OFF -DGF_BUILD_TESTS=ON -DGF_SANITIZE=ON
	cmake --build build/ctest-sanitize
	ctest --test-dir build/ctest-sanitize --output-on-failure

# The fuzz target of the C API under ASan + UBSan (build/fuzz): libFuzzer where Clang is
# installed, else a random-input driver; FUZZ_SECONDS long.
FUZZ_SECONDS ?= 60
FUZZ_CC = $(shell command -v clang || command -v clang-14 || command -v cc)

fuzz: setup
	CC=$(FUZZ_CC) cmake -S . -B build/fuzz $(CTEST_FLAGS) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	      -DGF_BUILD_TORCH=OFF -DGF_SANITIZE=ON -DGF_FUZZ=ON -DGF_FUZZ_SECONDS=$(FUZZ_SECONDS)
	cmake --build build/fuzz
	ctest --test-dir build/fuzz --output-on-failure

# The docs site (docs/: MyST pages, autodoc of the installed package) into build/docs,
# warnings as errors; Sphinx and MyST are installed where they are missing.  -E: every
# page is read again, so that a warning of an unchanged page is not skipped.
docs: install
	$(PYTHON) -c "import sphinx, myst_parser" >/dev/null 2>&1 || $(PYTHON) -m pip install -q sphinx myst-parser
	$(PYTHON) -m sphinx -E -W --keep-going -b html docs build/docs

test: pytest ctest fuzz docs

bench: install
	$(PYTHON) examples/train_end_to_end.py --out examples/results
	$(PYTHON) benchmarks/bench.py --out benchmarks/results
	@echo
	@echo "training: pictures (loss curve, central slice) and JSON in examples/results/"
	@echo "benchmark: tables (.md), JSON and plots (.png) in benchmarks/results/"

clean:
	rm -rf build
