#!/usr/bin/env bash
# Fidelity check of our DM against the reference main_DM.py at docs/reference.md's
# reduced CPU scale on PACS 32 px: noise init, lr 1.0, 256 real images per
# class, DSA, 300 iterations; evaluation ConvNet, 300 epochs, lr 0.01, DSA,
# batch 256, 5 runs (mean +- population std). Also DM+CHDDL and the random
# real baseline under the same settings.
#
#   bash bench/reproduce/dm_fidelity.sh PATH/TO/pacs_32.npz [WORKDIR]
set -euo pipefail
data=${1:?usage: dm_fidelity.sh PATH/TO/pacs_32.npz [WORKDIR]}
export CHDDL_WORKDIR=${2:-runs/dm_fidelity}
eval_opts=(--arch convnet --runs 5 --epochs 300)
chddl -q label "$data" --config pacs_32
for ipc in 1 10; do
  chddl -q condense --config dm_pacs_cpu --no-domain-aware --ipc "$ipc"
  chddl evaluate "${eval_opts[@]}"
  chddl evaluate --baseline random --ipc "$ipc" "${eval_opts[@]}"
  chddl -q condense --config dm_pacs_cpu --domain-aware --ipc "$ipc"
  chddl evaluate "${eval_opts[@]}"
done
