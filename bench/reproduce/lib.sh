# Shared options and scale settings of the reproduction scripts (sourced).
#
#   SCRIPT [--scale smoke|cpu|full] [--data DIR] [--workdir DIR] [--seeds "0 1"] [--ipcs "1 10"]
#
# --ipcs restricts the scripts that run both IPC 1 and 10 to the ones given.
# --data is the folder holding pacs_32.npz / pacs_64.npz (PACS scripts) and
# cifar10/ (cifar10_jpeg.tar.gz extracted: train/<class>, test/<class>). The
# smoke scale runs every command on the built-in demo dataset in seconds,
# only to prove the script works; its numbers mean nothing.
set -euo pipefail

scale=cpu
data=""
workdir=""
seeds=""
ipcs="1 10"
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --ipcs) ipcs=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown option $1 (valid: --scale, --data, --workdir, --seeds, --ipcs)" >&2; exit 2 ;;
  esac
done

experiment=$(basename "$0" .sh)
export CHDDL_WORKDIR=${workdir:-runs/$experiment-$scale}
chddl() { command chddl -q "$@"; }

case "$scale" in
  smoke)
    pacs_source=builtin:demo; pacs_preset=datasets/demo; cifar_preset=datasets/demo
    dm_iters=3; dm10_init=real; dc_iters=2; dc10_iters=1; mtt_iters=2
    experts=(--num-experts 1 --epochs 3); mtt_opts=(--max-start-epoch 1 --expert-epochs 1 --syn-steps 2); mtt10_opts=()
    batch_real=16; pacs_domains="photo cartoon sketch infrared"; cifar_source=builtin:demo
    eval_opts=(--runs 3 --epochs 2); xarch_opts=(--runs 3 --epochs 2)
    default_seeds="0 1" ;;
  cpu)
    pacs_source=${data:?--data DIR (holding pacs_32.npz, or cifar10/ with train/ and test/) is required}/pacs_32.npz; pacs_preset=pacs_32; cifar_preset=cifar10
    dm_iters=300; dm10_init=real; dc_iters=50; dc10_iters=5; mtt_iters=100
    # cpu-scale experts are short: the IPC 10 presets' start epochs (20, 40) are capped
    experts=(--num-experts 1 --epochs 12); mtt_opts=(); mtt10_opts=(--max-start-epoch 10)
    batch_real=64; pacs_domains="art_painting cartoon photo sketch"; cifar_source=${data:-}/cifar10
    eval_opts=(--runs 3 --epochs 300); xarch_opts=(--runs 3 --epochs 100)
    default_seeds="0 1" ;;
  full)
    pacs_source=${data:?--data DIR (holding pacs_64.npz) is required}/pacs_64.npz; pacs_preset=pacs_64; cifar_preset=cifar10
    dm_iters=20000; dm10_init=noise; dc_iters=1000; dc10_iters=1000; mtt_iters=5000
    experts=(--num-experts 100 --epochs 50); mtt_opts=(); mtt10_opts=()
    batch_real=256; pacs_domains="art_painting cartoon photo sketch"; cifar_source=${data:-}/cifar10
    eval_opts=(--runs 10 --epochs 1000); xarch_opts=(--runs 10 --epochs 1000)
    default_seeds="0 1" ;;
  *) echo "--scale must be smoke, cpu or full, got $scale" >&2; exit 2 ;;
esac
if [ -z "${ipcs// /}" ]; then echo "--ipcs takes 1 and/or 10, got nothing" >&2; exit 2; fi
for ipc in $ipcs; do
  case "$ipc" in 1|10) ;; *) echo "--ipcs takes 1 and/or 10, got $ipc" >&2; exit 2 ;; esac
done
mtt10_iters=$mtt_iters  # MTT iterations at IPC 10 (cifar_scale shortens them)
subset=()  # label options cutting the dataset (--train-per-class, --test-per-class), set by cifar_scale
multi_seed_methods=dm  # methods that run every seed at cpu scale (the PACS DM vs DM+CHDDL comparison)
dataset_note="PACS at 32 px (paper 64)"
seeds_given=${seeds:+yes}
seeds=${seeds:-$default_seeds}
first_seed=${seeds%% *}

# What this scale changes against the paper's protocol (printed first by every script).
describe_scale() {
  echo "== $experiment, scale $scale, workspace $CHDDL_WORKDIR, commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo '?')"
  case "$scale" in
    smoke) echo "   smoke: built-in demo data, a few iterations and epochs; proves the commands chain, measures nothing" ;;
    cpu) echo "   cpu scale differs from the paper: $dataset_note, DM $dm_iters iterations (paper 20,000; IPC 10 from real" \
              "images, as docs/reference.md advises for short runs) with $batch_real real images per group (paper 256), DC $dc_iters / $dc10_iters iterations at IPC 1 / 10 (paper 1,000)," \
              "MTT ${experts[*]} and $mtt_iters iterations (IPC 10: $mtt10_iters${mtt10_opts[*]:+, ${mtt10_opts[*]}}) (paper 100 x 50 epochs, 5,000), evaluation ${eval_opts[*]}" \
              "(paper 10 runs x 1,000 epochs), cross-architecture ${xarch_opts[*]};" \
              "$(if [ -n "$multi_seed_methods" ]; then echo "only $multi_seed_methods runs every seed, the rest use"; else echo "every set uses"; fi)" \
              "the first seed unless --seeds is given" ;;
    full) echo "   full scale: the paper's protocol (PACS 64 px, DM 20,000 / DC 1,000 / MTT 5,000 iterations, 100 experts x 50 epochs," \
               "10 evaluation runs x 1,000 epochs)" ;;
  esac
  echo "   condensation seeds: $seeds; IPC: $ipcs"
}

# Seeds for a method: every seed for the methods of $multi_seed_methods (DM);
# the first only for the costlier DC and MTT and for the ablation scripts
# (which pass their own tag) at cpu scale, unless --seeds was given.
seeds_for() {
  if [[ " $multi_seed_methods " == *" $1 "* ]] || [ -n "$seeds_given" ] || [ "$scale" = full ]; then echo "$seeds"; else echo "$first_seed"; fi
}

# Condensation options of METHOD at IPC for DATASET (pacs | cifar10), in the array opts.
method_opts() {
  local method=$1 ipc=$2 dataset=$3 preset
  case $method in
    dm) opts=(--base dm --ipc "$ipc" --iterations "$dm_iters" --batch-real "$batch_real")
        if [ "$ipc" = 10 ]; then opts+=(--init "$dm10_init"); fi ;;
    dc) opts=(--base dc --ipc "$ipc" --iterations "$([ "$ipc" = 1 ] && echo "$dc_iters" || echo "$dc10_iters")")
        if [ "$scale" = smoke ]; then opts+=(--batch-real 16); fi ;;
    mtt) preset=mtt_${dataset}_ipc$ipc; if [ "$scale" = smoke ]; then preset=mtt_pacs_ipc1; fi
         opts=(--config "$preset" --ipc "$ipc" "${mtt_opts[@]}")
         if [ "$ipc" = 10 ]; then opts+=(--iterations "$mtt10_iters" "${mtt10_opts[@]}"); else opts+=(--iterations "$mtt_iters"); fi ;;
    *) echo "unknown method $method (valid: dm dc mtt)" >&2; exit 2 ;;
  esac
}

methods=${METHODS:-dm dc mtt}

# Paper Tables 1 and 2: every method of $methods (METHODS env, default dm dc
# mtt) at IPC 1 and 10, for each of its seeds, without and with CHDDL. After
# each condensation it calls evaluate_set METHOD IPC, which the script defines.
methods_both_ways() {
  local dataset=$1 method ipc seed aware
  for method in $methods; do
    if [ "$method" = mtt ]; then chddl pretrain-experts "${experts[@]}"; fi
    for ipc in $ipcs; do
      method_opts "$method" "$ipc" "$dataset"
      for seed in $(seeds_for "$method"); do
        for aware in --no-domain-aware --domain-aware; do
          chddl condense "${opts[@]}" "$aware" --seed "$seed"
          evaluate_set "$method" "$ipc"
        done
      done
    done
  done
}

# CIFAR-10 has 10 classes and 5.6x PACS's training images: at cpu scale its
# scripts cut the data and shorten every stage further, to stay within about
# an hour each on 2 cores, and run one condensation seed (the 2-seed
# comparison is PACS's).
# Called by the CIFAR scripts before describe_scale.
cifar_scale() {
  multi_seed_methods=""
  dataset_note="CIFAR-10 at 32 px as in the paper"
  if [ "$scale" = cpu ]; then
    subset=(--train-per-class 500 --test-per-class 200); dm_iters=200; dc_iters=30; dc10_iters=2; mtt_iters=60
    experts=(--num-experts 1 --epochs 8); eval_opts=(--runs 3 --epochs 200); xarch_opts=(--runs 3 --epochs 30)
    # an IPC 10 iteration of the preset (30 unrolled steps on 100 images) costs ~6x an IPC 1 one (50 steps on 10)
    mtt10_iters=30; mtt10_opts=(--syn-steps 10 --max-start-epoch 6)
    dataset_note="CIFAR-10 at 32 px with seeded subsets of 500 train / 200 test images per class (paper 5,000 / 1,000)"
  fi
}

# `chddl label` of the CIFAR-10 data, with the scale's subset.
label_cifar() {
  chddl label "$cifar_source" --config "$cifar_preset" "${subset[@]}"
}
