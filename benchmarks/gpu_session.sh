#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One call on the GPU machine: build for sm_90, then the stages named on the command
# line (default: all), everything logged under $OUT (the device tool brings it back).
#
#   bash benchmarks/gpu_session.sh build test sanitize sass bench train sweep
#
# build     make install (pip drives CMake + nvcc), ptxas's per-kernel report in $OUT/ptxas.txt
# test      make test: the README's test command (pytest with CUDA, ctest, sanitizers, and
#           the docs where Sphinx is installed)
# sanitize  compute-sanitizer memcheck, racecheck and initcheck: launch configurations
#           and the edge-case suites (tests/test_reliability.py, tests/test_properties.py)
# sass      SASS of the kernels ($OUT/sass.txt) for reading off-line
# bench     benchmarks/bench.py: peers and ours ($OUT/results/)
# train     examples/train_end_to_end.py on the GPU ($OUT/train/, $OUT/train-small/)
# sweep     ours under several launch configurations ($OUT/results/)
# profile   where a small (B = 500, N = 1000) training step spends its time
# cudatest  pytest's CUDA cases only (-k cuda), quicker than `test`
# sanquick  compute-sanitizer memcheck, racecheck and initcheck over tests/cuda_sanitize.py
#           alone (launch configurations, channel blocks, cutoff), quicker than `sanitize`
# graphs    the training example eager and with --cuda-graph, at B = 500, N = 1000 and at
#           the CPU defaults' size (the times printed)
# maths     benchmarks/bench_maths.py: accuracy, exact op before/after (the previous
#           build from .bench_old/, carried), channels, cutoff ($OUT/results/)
# diag      the CUDA machine's toolchain, and bad-input errors one case at a time
# culltrain the training example before (the old GPU defaults: 30,000 Gaussians, 131,072
#           host-drawn points, no cutoff) and after (its GPU defaults, cutoff 6, saving the
#           field: $OUT/train-cull/), and the new size without cutoff for its time per step
# keopscheck KeOps (from the wheels in .whl/, carried; `pip wheel --no-deps -w .whl
#           pykeops==2.3 keopscore==2.3` where pip works) checked against the op
#           (benchmarks/keops_peer.py)
# autodiff  benchmarks/bench_autodiff.py: first-order and eikonal (second-order) steps
# graphstep benchmarks/bench_graph_step.py: the small training step eager and in a CUDA graph
# ptx80     a second build from PTX for compute capability 8.0 alone (JIT-compiled by the
#           driver), and the CUDA tests against it
# culltest  pytest's CUDA cases of the suites that culling and second order touch
# cullsan   compute-sanitizer (three tools) over the culled and double-backward cases of
#           tests/cuda_sanitize.py
# cullprof  benchmarks/profile_cull.py: kernel times of the culled path, cell-size sweep
# cullbench benchmarks/bench_cull.py, cases $CULL_CASES (default big,mid,giant,small; add
#           trained after culltrain), KeOps from .whl/ as in keopscheck
# pkg       the installed package (sm_90 build) into $OUT/pkg.tgz, to carry into a later
#           call as .gpubuild/ (see prebuilt) instead of building again
# prebuilt  use .gpubuild/gaussfield (carried) instead of building: PYTHONPATH
# dist      benchmarks/bench_distributed.py over every GPU seen (DIST_ARGS for more)
# docsblocks every Python code block of the README and docs/ (tests/test_docs_blocks.py),
#           the ones marked `<!-- docs-block: gpu -->` included
# voxel     voxelize on CUDA: tests/test_voxelize*.py, compute-sanitizer (memcheck, racecheck,
#           initcheck) over tests/cuda_sanitize_voxel.py, benchmarks/bench_voxel.py ($OUT/results/)
# bitwise   a reshaping's check against the code before it (.bench_old/, carried: a
#           source tree of the earlier commit): both built for sm_90, every op's outputs
#           compared bit for bit (benchmarks/bitwise.py), the dense pair rates of both
#           alternating twice (benchmarks/dense_rate.py)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gaussfield-out}
mkdir -p "$OUT/results"
LOG="$OUT/session.log"
stages=${*:-build test sanitize sass bench train sweep}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
# The image has a second GCC in /opt/gcc whose libstdc++ is static-only: a library
# linked by it carries a private C++ runtime (the build's check refuses it).  Build with
# the system compiler, whose libstdc++.so is the one torch runs on.
echo "CC=${CC:-} CXX=${CXX:-} (from the environment)"
# nvcc's host compiler too: CMake adds its library directories to the final link.
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
fi
status=0

stage() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
# the carried wheels in .whl/ (pykeops, keopscore; plyfile for setup), into /tmp/site
carried_wheels() {
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
      || echo "the KeOps wheels did not install: no KeOps peers"
  else
    echo "no .whl/: no KeOps peers (carry .whl with pykeops and keopscore wheels)"
  fi
  # KeOps compiles its engine with $CXX: the system g++ set above (the /opt/gcc one's
  # static libstdc++ made it crash), into a cache of its own
  export KEOPS_CACHE_FOLDER=${KEOPS_CACHE_FOLDER:-/tmp/keops-cache}
}
run() {  # run a stage command, log it, remember failure
  local start=$SECONDS
  "$@" 2>&1
  local rc=$?
  echo "--- exit $rc after $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
  return $rc
}

{
stage environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
nvcc --version | tail -2

for s in $stages; do
  case $s in
  build)
    stage build
    rm -rf build/cp3*  # a warm machine keeps it, compiler choices and all (build/ptx80 apart)
    # the machine has no network: setup's Python packages (plyfile) come as wheels in .whl/
    carried_wheels
    # ptxas's register and spill report of every kernel (GF_PTXAS_VERBOSE) in the log
    CMAKE_ARGS="-DGF_PTXAS_VERBOSE=ON" run make install > "$OUT/build.log" || { tail -60 "$OUT/build.log"; exit 1; }
    grep -h "ptxas info" "$OUT/build.log" > "$OUT/ptxas.txt" || true
    rm -f "$OUT/build.log"
    python3 -c "import gaussfield; i = gaussfield.build_info(); assert i['cuda_kernels'], 'no CUDA kernels: ' + i['cuda_note']; print('CUDA kernels for', i['cuda_architectures'])" || exit 1
    ;;
  pkg)
    stage pkg
    dir=$(python3 -c "import gaussfield, os; print(os.path.dirname(gaussfield.__file__))")
    tar czf "$OUT/pkg.tgz" --exclude=__pycache__ -C "$(dirname "$dir")" gaussfield && ls -la "$OUT/pkg.tgz"
    ;;
  prebuilt)
    stage prebuilt
    export PYTHONPATH=$PWD/.gpubuild${PYTHONPATH:+:$PYTHONPATH}
    python3 -c "import gaussfield; print('from', gaussfield.__file__); i = gaussfield.build_info(); assert i['cuda_kernels'], 'no CUDA kernels: ' + i['cuda_note']" || exit 1
    ;;
  dist)
    stage dist
    nvidia-smi topo -m
    env | grep -E "^(NCCL|TORCH_SYMM|NVSHMEM)" || true
    run python3 benchmarks/bench_distributed.py --out "$OUT/results" --work "$OUT/work" ${DIST_ARGS:-}
    ;;
  diag)
    stage diag
    g++ --version | head -1
    cat > /tmp/bad.py <<'PY'
import sys, torch, gaussfield
case, dev = int(sys.argv[1]), sys.argv[2]
good = [torch.rand(5, 3), torch.rand(4, 3), torch.rand(4, 6), torch.rand(4)]
bad = [(0, torch.rand(5, 2)), (0, torch.rand(())), (1, torch.rand(4, 2)), (2, torch.rand(4, 5)),
       (2, torch.rand(3, 6)), (3, torch.rand(5)), (0, torch.rand(5, 3).half()), (1, torch.rand(4, 3).double())]
i, t = bad[case]
good[i] = t
try:
    torch.ops.gaussfield.gaussian_field(*[g.to(dev) for g in good], 1e-6)
except RuntimeError as e:
    print("case", case, dev, "raised:", str(e).splitlines()[0][:90])
PY
    for dev in cpu cuda; do for c in 0 1 2 3 4 5 6 7; do
      python3 /tmp/bad.py $c $dev > /tmp/bad.out 2>&1; rc=$?; tail -1 /tmp/bad.out; echo "  exit $rc"
    done; done
    lib=$(python3 -c "import gaussfield,glob,os;print(glob.glob(os.path.dirname(gaussfield.__file__)+'/libgaussfield_ops*')[0])")
    echo "--- symbols"; nm -DC "$lib" | grep -E "_M_insert|num_put|locale|ostream" | head -20
    echo "--- needed"; readelf -d "$lib" | grep -E "NEEDED|RUNPATH|RPATH"
    echo "--- link"; (cd build/cp3* && ninja -t commands libgaussfield_ops.so 2>/dev/null | tail -1 | tr ' ' '\n' | grep -vE "\.o$" | tr '\n' ' ' | cut -c1-1500); echo
    echo "--- env"; env | grep -iE "^(LD|C|CXX|CPP|NVCC)FLAGS|^CMAKE|^CC=|^CXX=" || echo "(no compiler flags in the environment)"
    echo "--- torch"; python3 -c "import torch; print(torch._C._GLIBCXX_USE_CXX11_ABI); print([l for l in torch.__config__.show().splitlines() if 'CXX_FLAGS' in l or 'CXX_COMPILER' in l])"
    echo "--- top frames"; cuda-gdb -batch -ex "set pagination off" -ex run -ex "bt 12" --args python3 /tmp/bad.py 0 cpu 2>&1 | grep -E "^#" | head -12 | cut -c1-300
    ;;
  test)
    stage test
    # the README's test command, as on any machine (pytest, C unit tests, sanitizers, the
    # docs); the docs need Sphinx and MyST, which this offline machine may not have
    targets=test
    python3 -c "import sphinx, myst_parser" > /dev/null 2>&1 \
      || { echo "no Sphinx/MyST here: make test without its docs target"; targets="pytest ctest fuzz"; }
    run make $targets FUZZ_SECONDS=10 > "$OUT/pytest.txt"
    grep -E "passed|failed|error|tests passed|FAIL" "$OUT/pytest.txt" | tail -20; rm -f "$OUT/pytest.txt"
    ;;
  sanitize)
    stage sanitize
    # the launch configurations and partial tiles, then the edge-case suites on CUDA
    # (all but the 16 GiB and 2.8e9-pair cases and the threads, too slow under the tools)
    edge="cuda and not 2_to_the_31 and not 2_31 and not threads and not graph"
    for tool in memcheck racecheck initcheck; do
      run compute-sanitizer --tool $tool --error-exitcode 3 python3 tests/cuda_sanitize.py > "$OUT/san.txt"
      tail -4 "$OUT/san.txt"
      files="tests/test_reliability.py tests/test_cutoff.py tests/test_channels.py tests/test_vmap.py tests/test_culling.py"
      [ $tool = racecheck ] || files="$files tests/test_properties.py"
      run compute-sanitizer --tool $tool --error-exitcode 3 python3 -m pytest -q -p no:cacheprovider \
        $files -k "$edge" > "$OUT/san-$tool.txt"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/san-$tool.txt" | tail -4
    done
    rm -f "$OUT/san.txt"
    ;;
  sass)
    stage sass
    lib=$(find build -name 'libgaussfield_cuda.a' | head -1)
    cuobjdump -res-usage "$lib" 2>&1 | grep -E "Function|REG" | paste - - | sed -E 's/Function ([^:]*):/\1/' | cut -c1-220
    cuobjdump -sass "$lib" > "$OUT/sass.txt" 2>&1
    echo "sass: $(wc -l < "$OUT/sass.txt") lines"
    ;;
  bench)
    stage bench
    nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,utilization.gpu --format=csv,noheader -lms 500 > "$OUT/clocks.csv" &
    smi=$!
    run python3 benchmarks/bench.py --out "$OUT/results"
    kill $smi
    ;;
  train)
    stage train
    # the example at its GPU defaults, and batched against fused at the CPU defaults
    run python3 examples/train_end_to_end.py --out "$OUT/train"
    for impl in batched fused; do
      run python3 examples/train_end_to_end.py --impl $impl --gaussians 2000 --batch 4096 --steps 300 \
        --out "$OUT/train-small" --quiet
    done
    nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
    ;;
  ncu)
    stage ncu
    cat > /tmp/ncu_case.py <<'PY'
import torch, gaussfield
B, N = 100_000, 10_000
x = torch.rand(B, 3, device="cuda") * 10; m = torch.rand(N, 3, device="cuda") * 10
c = torch.full((N, 6), -0.77, device="cuda"); w = torch.randn(N, device="cuda")
g = torch.randn(B, device="cuda")
for _ in range(2):
    gaussfield.gaussian_field(x, m, c, w)
    torch.ops.gaussfield.gaussian_field_backward(g, x, m, c, w, 1e-6, [False, True, True, True])
torch.cuda.synchronize()
PY
    run ncu --clock-control none --kernel-name regex:"points_kernel|gaussians_kernel" --launch-skip 2 --launch-count 2 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
      --section Occupancy python3 /tmp/ncu_case.py > "$OUT/ncu.txt" 2>&1
    grep -E "points_kernel|gaussians_kernel|Duration|SM Frequency|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc A|No Eligible|Issued Warp|Eligible Warps|Active Warps Per|Achieved Occupancy|Theoretical Occupancy|Stall|Warp Cycles Per Issued|Block Limit Reg|Registers Per" "$OUT/ncu.txt" | cut -c1-150 | head -70
    ;;
  profile)
    stage profile
    run python3 benchmarks/profile_small.py
    ;;
  docsblocks)
    stage docsblocks
    run python3 -m pytest -q -p no:cacheprovider -rs tests/test_docs_blocks.py
    ;;
  cudatest)
    stage cudatest
    run python3 -m pytest -q -p no:cacheprovider tests -k "cuda" -x > "$OUT/pytest-cuda.txt"
    grep -E "passed|failed|Error|error" "$OUT/pytest-cuda.txt" | tail -30
    ;;
  voxel)
    stage voxel
    run python3 -m pytest -q tests/test_voxelize_cuda.py tests/test_voxelize.py -p no:cacheprovider > "$OUT/voxel-tests.txt"
    tail -40 "$OUT/voxel-tests.txt"
    for tool in memcheck racecheck initcheck; do
      run compute-sanitizer --tool $tool --error-exitcode 3 python3 tests/cuda_sanitize_voxel.py > "$OUT/san.txt" \
        || tail -25 "$OUT/san.txt"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all cases ran|Error" "$OUT/san.txt" | tail -4
    done
    rm -f "$OUT/san.txt"
    run python3 benchmarks/bench_voxel.py --out "$OUT/results"
    ;;
  sanquick)
    stage sanquick
    for tool in memcheck racecheck initcheck; do
      run compute-sanitizer --tool $tool --error-exitcode 3 python3 tests/cuda_sanitize.py > "$OUT/san.txt" \
        || tail -25 "$OUT/san.txt"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all checks passed|Error" "$OUT/san.txt" | tail -4
    done
    rm -f "$OUT/san.txt"
    ;;
  graphs)
    stage graphs
    for size in "--gaussians 1000 --batch 500" "--gaussians 2000 --batch 4096"; do
      for mode in "" "--cuda-graph"; do
        run python3 examples/train_end_to_end.py $size --steps 1000 --grid 32 $mode --quiet \
          --out /tmp/graphs > /tmp/graphs.log || tail -20 /tmp/graphs.log
        grep -E "ms per step" /tmp/graphs.log
      done
    done
    run python3 benchmarks/bench_graph_step.py --out "$OUT/results"
    ;;
  maths)
    stage maths
    if [ -d .bench_old ]; then
      (cd .bench_old && rm -rf build && python3 -m pip install -q --no-build-isolation --no-deps \
        --target /tmp/oldpkg . > /tmp/old-build.log 2>&1) || { tail -30 /tmp/old-build.log; }
      run python3 benchmarks/bench_maths.py --before /tmp/oldpkg --out "$OUT/results"
    else
      run python3 benchmarks/bench_maths.py --out "$OUT/results"
    fi
    ;;
  bitwise)
    stage bitwise
    if [ ! -d .bench_old ]; then echo "no .bench_old/: carry the earlier tree"; status=1; continue; fi
    (cd .bench_old && rm -rf build && python3 -m pip install -q --no-build-isolation --no-deps \
      --target /tmp/oldpkg . > /tmp/old-build.log 2>&1) || { tail -30 /tmp/old-build.log; status=1; continue; }
    PYTHONPATH=/tmp/oldpkg run python3 benchmarks/bitwise.py save /tmp/snap-cuda.pt --device cuda
    run python3 benchmarks/bitwise.py compare /tmp/snap-cuda.pt --device cuda
    PYTHONPATH=/tmp/oldpkg run python3 benchmarks/bitwise.py save /tmp/snap-cpu.pt
    run python3 benchmarks/bitwise.py compare /tmp/snap-cpu.pt
    for round in 1 2; do
      echo "-- old"; PYTHONPATH=/tmp/oldpkg run python3 benchmarks/dense_rate.py --json "$OUT/results/dense-old-$round.json"
      echo "-- new"; run python3 benchmarks/dense_rate.py --json "$OUT/results/dense-new-$round.json"
    done
    ;;
  cullsan)
    stage cullsan
    # the culled kernels alone under the three tools (tests/cuda_sanitize.py culled)
    for tool in memcheck racecheck initcheck; do
      run compute-sanitizer --tool $tool --error-exitcode 3 python3 tests/cuda_sanitize.py culled \
        > "$OUT/san.txt" || tail -25 "$OUT/san.txt"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all checks passed|Error" "$OUT/san.txt" | tail -4
    done
    rm -f "$OUT/san.txt"
    ;;
  cullprof)
    stage cullprof
    run python3 benchmarks/profile_cull.py --out "$OUT/results"
    ;;
  culltest)
    stage culltest
    run python3 -m pytest -q -p no:cacheprovider --maxfail=${MAXFAIL:-20} tests/test_culling.py \
      tests/test_culling_structure.py tests/test_cutoff.py tests/test_cuda_graphs.py tests/test_autodiff.py tests/test_vmap.py tests/test_channels.py \
      tests/test_low_precision.py tests/test_cuda.py tests/test_gradcheck.py tests/test_inputs.py \
      tests/test_quaternion.py -k cuda > "$OUT/pytest-cull.txt" || tail -60 "$OUT/pytest-cull.txt"
    grep -E "passed|failed|Error|error" "$OUT/pytest-cull.txt" | tail -30
    ;;
  cullbench)
    stage cullbench
    carried_wheels
    trained=()
    [ -f "$OUT/train-cull/trained-field.pt" ] && trained=(--trained "$OUT/train-cull/trained-field.pt")
    run python3 benchmarks/bench_cull.py --out "$OUT/results" --cases "${CULL_CASES:-big,mid,giant,small}" \
      --peers "${CULL_PEERS:-gaussfield,dense,keops_dense,keops_sparse,keops_sparse_planned}" \
      "${trained[@]}" > "$OUT/cullbench.txt"
    grep -vE "^\[(KeOps|pyKeOps)\]" "$OUT/cullbench.txt" | head -80
    ;;
  culltrain)
    stage culltrain
    # the training example before (the old GPU defaults: 30,000 Gaussians, 131,072
    # host-drawn points, no cutoff) and after (its GPU defaults, cutoff 6, saving the
    # field for cullbench's trained case), and the new size without cutoff (200 steps,
    # for its time per step)
    mkdir -p "$OUT/train-cull"
    run python3 examples/train_end_to_end.py --gaussians 30000 --batch 131072 --cutoff none --points host \
      --quiet --out "$OUT/train-cull/before"
    run python3 examples/train_end_to_end.py --quiet --out "$OUT/train-cull/after" \
      --save "$OUT/train-cull/trained-field.pt"
    run python3 examples/train_end_to_end.py --cutoff none --steps 200 --grid 32 --quiet \
      --out "$OUT/train-cull/dense-new-size"
    grep -h -E '"(psnr_db|ms_per_step)"' "$OUT"/train-cull/*/*.json
    ;;
  keopscheck)
    stage keopscheck
    carried_wheels
    run python3 benchmarks/keops_peer.py
    ;;
  ptx80)
    stage ptx80
    # any CUDA card: the kernels built from PTX for compute capability 8.0 alone (the
    # driver compiles them for this GPU at load), installed apart, then the CUDA tests
    # (.gpubuild80/gaussfield, carried from an earlier call's $OUT/ptx80.tgz: no build;
    # PTX80_TESTS=0: build and pack only)
    if [ -d .gpubuild80/gaussfield ]; then
      rm -rf /tmp/ptx80 && mkdir -p /tmp/ptx80 && cp -r .gpubuild80/gaussfield /tmp/ptx80/
    else
      CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=80-virtual" run python3 -m pip install -q --no-build-isolation \
        --no-deps --target /tmp/ptx80 -C build-dir=build/ptx80 . > "$OUT/ptx80-build.log" \
        || tail -30 "$OUT/ptx80-build.log"
      grep -h "CMAKE_CUDA_ARCHITECTURES" build/ptx80/CMakeCache.txt 2>/dev/null | head -2
      tar czf "$OUT/ptx80.tgz" --exclude=__pycache__ -C /tmp/ptx80 gaussfield
    fi
    # what the library holds: PTX for compute_80 and no SASS (cubin) for any sm
    lib=$(ls /tmp/ptx80/gaussfield/libgaussfield_ops*.so | head -1)
    echo "ptx: $(cuobjdump --list-ptx "$lib" 2>&1 | grep -c ptx) files, $(cuobjdump --list-ptx "$lib" 2>&1 | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')"
    echo "elf (SASS): $(cuobjdump --list-elf "$lib" 2>&1 | grep -c cubin) files"
    [ "${PTX80_TESTS:-1}" = 0 ] && continue
    PYTHONPATH=/tmp/ptx80 python3 -c "import gaussfield; print('from', gaussfield.__file__)"
    PYTHONPATH=/tmp/ptx80 run python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
      tests/test_culling.py tests/test_autodiff.py tests/test_cutoff.py tests/test_channels.py \
      tests/test_quaternion.py tests/test_inputs.py tests/test_reliability.py \
      -k cuda > "$OUT/pytest-ptx80.txt" || tail -40 "$OUT/pytest-ptx80.txt"
    grep -E "passed|failed" "$OUT/pytest-ptx80.txt" | tail -3
    ;;
  autodiff)
    stage autodiff
    run python3 benchmarks/bench_autodiff.py --out "$OUT/results"
    ;;
  graphstep)
    stage graphstep
    run python3 benchmarks/bench_graph_step.py --out "$OUT/results"
    ;;
  sweep)
    stage sweep
    run python3 benchmarks/bench.py --sweep --out "$OUT/results"
    ;;
  esac
done
echo; echo "=== done, status $status"
exit $status
} 2>&1 | tee "$LOG"
exit ${PIPESTATUS[0]}
