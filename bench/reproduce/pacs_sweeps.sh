#!/usr/bin/env bash
# Paper Figure 4 (number of pseudo-domains D = 1..8) and the FFT crop ratio
# beta the paper leaves open (0.05, 0.1, 0.2, 0.5 at D 4): DM+CHDDL on PACS,
# IPC 1, with DM alone as the reference line. `chddl report` tabulates
# accuracy against each swept setting.
#
#   bash bench/reproduce/pacs_sweeps.sh --scale cpu --data $DATA
source "$(dirname "$0")/lib.sh"
describe_scale
opts=(--base dm --ipc 1 --iterations "$dm_iters" --batch-real "$batch_real")
for seed in $(seeds_for sweep); do
  chddl label "$pacs_source" --config "$pacs_preset"
  chddl condense "${opts[@]}" --no-domain-aware --seed "$seed"
  chddl evaluate "${eval_opts[@]}"
  for d in 1 2 3 4 5 6 7 8; do
    chddl label "$pacs_source" --config "$pacs_preset" --num-domains "$d"
    chddl condense "${opts[@]}" --domain-aware --seed "$seed"
    chddl evaluate "${eval_opts[@]}"
  done
  for beta in 0.05 0.2 0.5; do
    chddl label "$pacs_source" --config "$pacs_preset" --beta "$beta"
    chddl condense "${opts[@]}" --domain-aware --seed "$seed"
    chddl evaluate "${eval_opts[@]}"
  done
done
command chddl report
