#!/usr/bin/env bash
# One device lease, in this order:
#   1. alone on the GPU: the reference's DM and MTT IPC 10 loops (bench/reference.py, PACS shape: 7 classes,
#      64 px, ConvNetD4), then DM, DC and MTT with and without CHDDL at IPC 1 and 10 (bench/gpu/speed.py,
#      PACS 64 px, the paper's settings, beside its Table H), then the reference's two loops again, so ours
#      sit between two reference readings;
#   2. at once, as the timings are done: the CUDA tests, and (with LADDER_MINUTES set) the issue-34 ladder
#      (bench/gpu/ladder.py: DM and DM + CHDDL on PACS 64 px, continued rung by rung, stopped at the deadline).
# Everything lands under $OUT as it finishes (at most 8 files come back): cuda_tests.log (with the device and
# driver first), speed.json, speed.md, side.jsonl (one JSON line per reference reading), and the ladder's tar.gz.
#
#   bash bench/gpu/check.sh           # on the device; needs .data/pacs_64.npz (and .reference for step 1's
#                                     # reference readings), carried
#   bash bench/gpu/check.sh --smoke   # on CPU with the demo data: proves the script runs (a test does this)
#
# Before a device run, here: mkdir -p .data && cp $DATA/pacs_64.npz .data/ and the reference
# repositories under .reference (bench/reference.py), then
# run(command='LADDER_END=$(($(date +%s) + 540)) bash bench/gpu/check.sh', carry=[".data", ".reference"],
# timeout_s=570); LADDER_MINUTES=M instead gives the ladder M minutes from when it starts.
set -uo pipefail
cd "$(dirname "$0")/../.."
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; elif [ -n "${1:-}" ]; then echo "usage: $0 [--smoke]" >&2; exit 2; fi
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
py=${PYTHON:-python3}
status=0
if [ "$smoke" = 1 ]; then
  device=cpu; data=builtin:demo; speed_opts=(--smoke --iterations 1); ref_opts=(--iterations 2 --syn-steps 2)
else
  device=cuda; data=.data/pacs_64.npz; speed_opts=(--iterations 10 --dc-iterations 3)
  ref_opts=(--iterations 6 --classes 7 --size 64 --syn-steps 20 --expert-epochs 2)
  if [ ! -f "$data" ]; then
    echo "error: $data is missing; copy pacs_64.npz (PACS at 64 px, official split) to $data and carry .data" >&2
    exit 2
  fi
  # The device's python3 already has torch, torchvision, typer, rich, safetensors, pyyaml, numpy, matplotlib.
  "$py" -m pip install -q --no-deps --no-build-isolation -e . > /tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
  export PYTHONUNBUFFERED=1
fi
{ "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv; } > /tmp/env.txt 2>&1
cat /tmp/env.txt

reference() {  # one reading of the reference's DM and MTT IPC 10 loops, appended to side.jsonl
  [ -d "${REFERENCE:-.reference}" ] || { echo "no reference repositories under ${REFERENCE:-.reference}: skipped"; return 0; }
  for method in dm mtt; do
    "$py" bench/reference.py --reference "${REFERENCE:-.reference}" --method "$method" --ipc 10 --device "$device" \
      "${ref_opts[@]}" 2> "/tmp/ref_$method.err" | sed "s/^{/{\"method\": \"$method\", /" >> "$out/side.jsonl" \
      || { status=1; tail -n 5 "/tmp/ref_$method.err"; }
  done
  tail -n 2 "$out/side.jsonl"
}

reference
"$py" bench/gpu/speed.py --data "$data" --device "$device" --out "$out" --one-process "${speed_opts[@]}" || status=1
reference

ladder_pid=
if [ -n "${LADDER_END:-}" ]; then  # an epoch second: the ladder stops 45 s before it (checkpoints, packing)
  LADDER_MINUTES=$(awk -v end="$LADDER_END" -v now="$(date +%s)" 'BEGIN { m = (end - now - 45) / 60; print (m > 0.5 ? m : 0.5) }')
fi
if [ -n "${LADDER_MINUTES:-}" ]; then
  ladder_opts=(--minutes "$LADDER_MINUTES")
  [ "$smoke" = 1 ] && ladder_opts+=(--smoke --rungs 3,6 --ipc 1 --threads 1)
  "$py" bench/gpu/ladder.py --data "$data" --workspace chddl-runs/ladder --out "$out" --device "$device" \
    "${ladder_opts[@]}" > /tmp/ladder.log 2>&1 &
  ladder_pid=$!
fi
{ cat /tmp/env.txt; "$py" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1; } > "$out/cuda_tests.log"
grep -E "passed|failed|skipped|error" "$out/cuda_tests.log" | tail -n 12
grep -q -E "[0-9]+ (failed|error)" "$out/cuda_tests.log" && status=1
if [ -n "$ladder_pid" ]; then
  wait "$ladder_pid" || status=1
  cat /tmp/ladder.log
fi
echo "results in $out (exit $status)"
exit "$status"
