#!/usr/bin/env bash
# Issue-4 acceptance at CPU scale: a few experts on PACS 32 px, then MTT +
# CHDDL with the paper's PACS IPC 1 preset (Table I: syn_steps 10,
# expert_epochs 2, max_start_epoch 10, lr_img 1e4, lr_lr 1e-5, syn lr 0.01,
# noise init), checking it runs without NaN; then a short evaluation.
#
#   bash bench/reproduce/mtt_pacs_smoke.sh PATH/TO/pacs_32.npz [WORKDIR] [ITERATIONS]
set -euo pipefail
data=${1:?usage: mtt_pacs_smoke.sh PATH/TO/pacs_32.npz [WORKDIR] [ITERATIONS]}
export CHDDL_WORKDIR=${2:-runs/mtt_pacs_smoke}
iterations=${3:-50}
chddl -q label "$data" --config pacs_32
chddl pretrain-experts --num-experts 1 --epochs 12
chddl condense --config mtt_pacs_ipc1 --iterations "$iterations"
chddl evaluate --runs 3 --epochs 300
