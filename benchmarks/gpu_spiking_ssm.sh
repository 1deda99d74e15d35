#!/usr/bin/env bash
# Every GPU measurement of the SpikingSSM kernels (issues 8, 16, 18), in one call (a lent GPU machine: run
# ../shared/gpu/prepare.sh --data first, then the device tool with carry [".gpu"] and this script; about 9 minutes on
# an H200). Logs go to ${OUT:-gpu_logs}/; TF32 is off for every reference.
#   1. the fused kernels' tests (SDN, SLTT, S4D, the exact soma's scans, the chunked convolution) on CUDA, not the interpreter;
#   2. the S4D kernel three ways (fused Triton, two-level torch, direct torch): which one `auto` should pick;
#   3. every fused kernel's measured time beside its modelled one (benchmarks/kernel_budget.py --measure), which
#      also times each SLTT pipelining (STAGES), SDN block and exact-soma chunk config; the exact soma's scans per
#      chunk on the GPU (its scan rounds as a tree there: the rounding path's share is only seen on a GPU);
#   4. the speed table at the paper's setting (batch 64, width 256, d_state 64, L = 1K..8K), with --verify and
#      --decompose, the exact soma (lif_parallel) included, then the same under autocast;
#   4b. the current paths side by side (issue 23): fft and chunked layers for the SDN soma, SpikingJelly's LIF and the
#      exact soma at L = 1K and 8K, part by part (S4D kernel, current path, soma, the mixing in its four forms), in
#      float32 and under autocast, and the mixing forms' copies/transposes under the profiler (about 1 minute);
#   5. two epochs of sequential MNIST with the SDN soma and with SpikingJelly's LIF (sequences/s, accuracy), and the
#      embedded language model trained with sdn, lif_parallel and lif (float32, so that lif_parallel stays exact;
#      lif: the paper's arithmetic in a torch loop since issue 24).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_logs}
mkdir -p "$out"
if [[ -d .gpu ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl
  export PYTHONPATH=/tmp/site
fi
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 NVIDIA_TF32_OVERRIDE=0
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_ssm_kernels.py tests/test_lif_parallel_kernels.py tests/test_chunked_conv_kernels.py \
    > "$out/kernel_tests.txt" 2>&1
python3 benchmarks/s4d_speed.py --device cuda --lengths 1024 8192 --repeats 20 > "$out/s4d_speed.txt" 2>&1
python3 -m benchmarks.kernel_budget --measure --jobs 12 > "$out/kernel_budget.txt" 2>&1  # measured beside modelled
python3 benchmarks/neuron_speed.py --batch 64 --width 256 --verify --decompose > "$out/neuron_speed.txt" 2>&1
python3 benchmarks/lif_parallel_iterations.py --fused --sweep 64 --rows 2048 --length 8192 > "$out/lif_parallel_iterations.txt" 2>&1
python3 benchmarks/neuron_speed.py --batch 64 --width 256 --amp --somas "sdn fused" "lif sj" "sltt fused" "exact fused" \
    > "$out/neuron_speed_amp.txt" 2>&1
for amp in "" --amp; do
  python3 benchmarks/neuron_speed.py --batch 64 --width 256 --lengths 1024 8192 \
      --somas "sdn fused" "lif sj" "exact fused" --convs fft chunked --decompose $amp > "$out/neuron_speed_convs${amp/--/_}.txt" 2>&1
done
python3 -m benchmarks.layer_parts --profile --batch 64 --width 256 --length 8192 > "$out/mixing_profile.txt" 2>&1
data=${DATA:-.gpu/data}
for soma in sdn lif_sj; do  # lif_sj: SpikingJelly's fused LIFNode (neuron.leak=null; neuron=lif is a torch loop)
  args="neuron=$soma"; [[ $soma == lif_sj ]] && args="neuron=lif neuron.leak=null"
  python3 train.py experiment=seq/smnist $args trainer=gpu trainer.epochs=2 logger=none \
      paths.data="$data" paths.output="$out/runs" run_name="smnist_$soma" > "$out/smnist_$soma.txt" 2>&1
done
for soma in sdn lif_parallel lif; do
  python3 train.py experiment=lm/embedded neuron=$soma trainer=gpu trainer.precision=32 logger=none \
      paths.output="$out/runs" run_name="lm_$soma" > "$out/lm_$soma.txt" 2>&1 &
done
wait
python3 - "$out" <<'PY' > "$out/smnist_summary.txt" 2>&1
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1], "runs").glob("*/smnist_*/summary.json")):
    s = json.loads(path.read_text())
    print(path.parent.name, f"{s['images_per_s']:.0f} sequences/s", f"val acc1 {s['final']['acc1']:.2f}%",
          s["neuron_implementation"], s.get("neuron_implementations_ran", {}).get("calls"))
for path in sorted(pathlib.Path(sys.argv[1], "runs").glob("*/lm_*/summary.json")):
    s = json.loads(path.read_text())
    print(path.parent.name, f"{s.get('tokens_per_s', 0):.0f} tokens/s", "final", s.get("final"))
PY
tail -n 4 "$out"/*.txt
