#!/usr/bin/env bash
# The device check of issue "GPU readiness": on one GPU, install the working
# tree, run the CUDA tests, then time DM, DC and MTT with and without CHDDL on
# PACS 64 px at IPC 1 and 10 (the paper's settings, beside its Table H).
# Everything lands under $OUT: cuda_tests.log, speed.md, speed.json, env.txt.
#
#   bash bench/gpu/check.sh           # on the device; needs .data/pacs64_gpu.npz (see below), carried
#   bash bench/gpu/check.sh --smoke   # on CPU with the demo data: proves the script runs (a test does this)
#
# Before a device run, here: python bench/gpu/prepare_data.py ../shared/data/pacs_64.npz .data/pacs64_gpu.npz
# then run(command="bash bench/gpu/check.sh", carry=[".data"], timeout_s=540).
set -uo pipefail
cd "$(dirname "$0")/../.."
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; elif [ -n "${1:-}" ]; then echo "usage: $0 [--smoke]" >&2; exit 2; fi
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
py=${PYTHON:-python3}
status=0
if [ "$smoke" = 1 ]; then
  device=cpu; data=builtin:demo; speed_opts=(--smoke --iterations 1)
else
  device=cuda; data=.data/pacs64_gpu.npz; speed_opts=(--iterations 3)
  if [ ! -f "$data" ]; then
    echo "error: $data is missing; run python bench/gpu/prepare_data.py ../shared/data/pacs_64.npz $data and carry .data" >&2
    exit 2
  fi
  # The device's python3 already has torch, torchvision, typer, rich, safetensors, pyyaml, numpy, matplotlib.
  "$py" -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
  export PYTHONUNBUFFERED=1
fi
{ "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } > "$out/env.txt" 2>&1
cat "$out/env.txt"
"$py" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.log" | tail -n 15
if [ "${PIPESTATUS[0]}" -ne 0 ]; then status=1; fi
"$py" bench/gpu/speed.py --data "$data" --device "$device" --out "$out" "${speed_opts[@]}" || status=1
echo "results in $out (exit $status)"
exit "$status"
