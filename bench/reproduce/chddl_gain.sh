#!/usr/bin/env bash
# Why does CHDDL show no gain? The decisive experiments of RESULTS.md's
# "Does CHDDL help?" section, on PACS, DM as the base, each set evaluated
# with the scale's protocol (ConvNet, depth by image size). PARTS (env)
# picks the parts, in this order:
#   a  the paper's setting: 64 px (ConvNet-4), noise init, IPC 1, DM and
#      DM+CHDDL at an iteration ladder (LADDER env, default "300 1000"); each
#      rung continues the finished shorter run (`condense` does this itself)
#   b  lambda -> 0 (LAMS env, default "0.001 0") through the CHDDL code path,
#      for each schedule of SCHEDULES (env, default "summed sequential
#      algorithm1"), 32 px IPC 1
#   c  Algorithm 1 with and without lambda on its domain steps against DM,
#      32 px IPC 1 and 10 (IPC 10 from real images)
#   g  the compute-matched control for c: DM continued to CONTROL_ITERS (env,
#      default 450: Algorithm 1's C + D steps cost ~1.5x a DM iteration)
#   d  structured masks: K x K masks shared by the colour channels, K in
#      KS (env, default "1 4 8"), 32 px IPC 1 and 10
#   e  the paper's Table B (real init) at IPC 1: DM and DM+CHDDL from real images
#   o  DM with other image-optimiser settings, LR:MOMENTUM pairs of OPTIMISERS (env, default
#      "1.5:0.25 2:0.5"; 1.5:0.25 is what the sequential schedule at lambda 0 computes), at IPCS
#   w  the whole-dataset baseline at 32 and 64 px (WHOLE_EPOCHS env, default 30)
# The reference lines (DM, default DM+CHDDL) of each IPC run with every part
# that needs them; cached sets are reused, so parts can run in any order.
#
#   PARTS="b c" bash bench/reproduce/chddl_gain.sh --scale cpu --data $DATA --workdir /tmp/gain32
#   PARTS=a LADDER="300 1000" bash bench/reproduce/chddl_gain.sh --scale cpu --data $DATA --workdir /tmp/gain64
source "$(dirname "$0")/lib.sh"
describe_scale
parts=${PARTS:-a b c d e}
ladder=${LADDER:-300 1000}
ks=${KS:-1 4 8}
lams=${LAMS:-0.001 0}
schedules=${SCHEDULES:-summed sequential algorithm1}
if [ "$scale" = smoke ]; then ladder="2 4"; ks="1 2"; fi
echo "   parts: $parts; 64 px ladder: $ladder; mask resolutions: $ks"

# condense OPTIONS... then evaluate the set it made, by its path (scripts sharing a workspace never
# evaluate each other's 'latest')
condense_eval() {
  local set
  set=$(chddl condense "$@" | sed -n 's/^condensed: //p')
  chddl evaluate "$set" --arch convnet "${eval_opts[@]}"
}
# condense SEED IPC OPTIONS... with DM's scale settings, then evaluate
set_of() {
  local seed=$1 ipc=$2; shift 2
  method_opts dm "$ipc" pacs
  condense_eval "${opts[@]}" "$@" --seed "$seed"
}
references() {  # DM and default DM+CHDDL at IPC
  local seed=$1 ipc=$2
  set_of "$seed" "$ipc" --no-domain-aware
  set_of "$seed" "$ipc" --domain-aware
}

for part in $parts; do
  case $part in
    a)
      if [ "$scale" = smoke ]; then src=$pacs_source; preset=$pacs_preset; else src=$data/pacs_64.npz; preset=pacs_64; fi
      chddl label "$src" --config "$preset"
      for rung in $ladder; do
        for seed in $seeds; do
          for aware in --no-domain-aware --domain-aware; do
            condense_eval --base dm --ipc 1 --init noise --batch-real "$batch_real" --iterations "$rung" $aware --seed "$seed"
          done
        done
      done ;;
    b)
      chddl label "$pacs_source" --config "$pacs_preset"
      for seed in $seeds; do
        references "$seed" 1
        for schedule in $schedules; do
          for lam in $lams; do set_of "$seed" 1 --domain-aware --schedule "$schedule" --lam "$lam"; done
        done
      done ;;
    c)
      chddl label "$pacs_source" --config "$pacs_preset"
      for ipc in $ipcs; do
        for seed in $seeds; do
          references "$seed" "$ipc"
          set_of "$seed" "$ipc" --domain-aware --schedule algorithm1
          set_of "$seed" "$ipc" --domain-aware --schedule algorithm1 --no-domain-lambda
        done
      done ;;
    d)
      chddl label "$pacs_source" --config "$pacs_preset"
      for ipc in $ipcs; do
        for seed in $seeds; do
          references "$seed" "$ipc"
          for k in $ks; do set_of "$seed" "$ipc" --domain-aware --mask-resolution "$k" --mask-channels shared; done
        done
      done ;;
    g)
      chddl label "$pacs_source" --config "$pacs_preset"
      control=${CONTROL_ITERS:-450}; if [ "$scale" = smoke ]; then control=$((dm_iters * 3 / 2)); fi
      for ipc in $ipcs; do
        for seed in $seeds; do
          method_opts dm "$ipc" pacs
          # the later --iterations wins; the run continues the scale's finished DM set
          condense_eval "${opts[@]}" --iterations "$control" --no-domain-aware --seed "$seed"
        done
      done ;;
    e)
      chddl label "$pacs_source" --config "$pacs_preset"
      for seed in $seeds; do
        set_of "$seed" 1 --no-domain-aware --init real
        set_of "$seed" 1 --domain-aware --init real
      done ;;
    o)
      chddl label "$pacs_source" --config "$pacs_preset"
      for ipc in $ipcs; do
        for seed in $seeds; do
          for pair in ${OPTIMISERS:-1.5:0.25 2:0.5}; do
            set_of "$seed" "$ipc" --no-domain-aware --lr-img "${pair%%:*}" --momentum-img "${pair#*:}"
          done
        done
      done ;;
    w)
      epochs=${WHOLE_EPOCHS:-30}; if [ "$scale" = smoke ]; then epochs=1; fi
      for src_preset in "$pacs_source:$pacs_preset" "${data:-}/pacs_64.npz:pacs_64"; do
        if [ "$scale" = smoke ] && [ "${src_preset#*:}" = pacs_64 ]; then continue; fi
        chddl label "${src_preset%%:*}" --config "${src_preset#*:}"
        chddl evaluate --baseline whole --arch convnet --runs 1 --epochs "$epochs"
      done ;;
    *) echo "unknown part $part (valid: a b c d e g o w)" >&2; exit 2 ;;
  esac
done
command chddl report
