#!/usr/bin/env bash
# Paper Table 6: how the pseudo-domain labels are made. DM+CHDDL on PACS at
# IPC 1 and 10 with FFT + Mean-Sort (the paper's), FFT + K-Means, log-var
# (+ K-Means), random and oracle (true domain) labels; DM alone as the base.
#
#   bash bench/reproduce/pacs_labelers.sh --scale cpu --data $DATA [--ipcs 1]
source "$(dirname "$0")/lib.sh"
describe_scale
for ipc in $ipcs; do
  opts=(--base dm --ipc "$ipc" --iterations "$dm_iters" --batch-real "$batch_real")
  if [ "$ipc" = 10 ]; then opts+=(--init "$dm10_init"); fi
  for seed in $(seeds_for ablation); do
    chddl label "$pacs_source" --config "$pacs_preset"
    chddl condense "${opts[@]}" --no-domain-aware --seed "$seed"
    chddl evaluate "${eval_opts[@]}"
    for labeler in fft fft-kmeans logvar logvar-kmeans random oracle; do
      chddl label "$pacs_source" --config "$pacs_preset" --labeler "$labeler"
      chddl condense "${opts[@]}" --domain-aware --seed "$seed"
      chddl evaluate "${eval_opts[@]}"
    done
  done
done
command chddl report
