#!/usr/bin/env bash
# Every GPU measurement issue 8 asks for, in one call (a lent GPU machine: run ../shared/gpu/prepare.sh --data
# first, then the device tool with carry [".gpu"] and this script). Logs go to ${OUT:-gpu_logs}/.
#   1. the fused kernels' tests compiled on CUDA (not the interpreter);
#   2. the speed table at the paper's setting (batch 64, width 256, d_state 64, L = 1K..8K), with --verify and
#      --decompose, then the same under autocast;
#   3. every fused kernel's measured time beside its modelled one (benchmarks/kernel_budget.py --measure);
#   4. two epochs of sequential MNIST with the SDN soma and with SpikingJelly's LIF (sequences/s, accuracy).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_logs}
mkdir -p "$out"
if [[ -d .gpu ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl
  export PYTHONPATH=/tmp/site
fi
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -m pytest -q -p no:cacheprovider tests/test_ssm_kernels.py > "$out/kernel_tests.txt" 2>&1
python3 benchmarks/neuron_speed.py --batch 64 --width 256 --verify --decompose > "$out/neuron_speed.txt" 2>&1
python3 -m benchmarks.kernel_budget --measure > "$out/kernel_budget.txt" 2>&1  # measured beside modelled
python3 benchmarks/neuron_speed.py --batch 64 --width 256 --amp --somas "sdn fused" "lif sj" "sltt fused" \
    > "$out/neuron_speed_amp.txt" 2>&1
data=${DATA:-.gpu/data}
for soma in sdn lif; do
  python3 train.py experiment=seq/smnist neuron=$soma trainer=gpu trainer.epochs=2 logger=none \
      paths.data="$data" paths.output="$out/runs" run_name="smnist_$soma" > "$out/smnist_$soma.txt" 2>&1
done
python3 - "$out" <<'PY' > "$out/smnist_summary.txt" 2>&1
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1], "runs").glob("*/smnist_*/summary.json")):
    s = json.loads(path.read_text())
    print(path.parent.name, f"{s['images_per_s']:.0f} sequences/s", f"val acc1 {s['final']['acc1']:.2f}%",
          s["neuron_implementation"], s.get("neuron_implementations_ran", {}).get("calls"))
PY
tail -n 4 "$out"/*.txt
