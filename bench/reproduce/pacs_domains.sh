#!/usr/bin/env bash
# Paper Tables 4 and 5 on PACS, DM and DM+CHDDL at IPC 1, per target domain T:
#   multi-domain: condensed from every domain, scored per true domain;
#   single-domain (Table 4): condensed from T's images only, scored on T;
#   leave-one-domain-out (Table 5): condensed without T, scored on T.
# True domain labels only select images and score; no method reads them.
#
#   bash bench/reproduce/pacs_domains.sh --scale cpu --data $DATA
source "$(dirname "$0")/lib.sh"
describe_scale
chddl label "$pacs_source" --config "$pacs_preset"
opts=(--base dm --ipc 1 --iterations "$dm_iters" --batch-real "$batch_real")
# Target domains outermost, so an interrupted run leaves complete DM vs DM+CHDDL pairs.
for seed in $(seeds_for protocols); do
  for aware in --no-domain-aware --domain-aware; do
    chddl condense "${opts[@]}" "$aware" --seed "$seed"
    chddl evaluate "${eval_opts[@]}"  # per-domain accuracy = the multi-domain column of both tables
  done
  for t in $pacs_domains; do
    for aware in --no-domain-aware --domain-aware; do
      chddl condense "${opts[@]}" "$aware" --seed "$seed" --domains "$t"
      chddl evaluate "${eval_opts[@]}" --target-domain "$t"
      chddl condense "${opts[@]}" "$aware" --seed "$seed" --exclude-domain "$t"
      chddl evaluate "${eval_opts[@]}" --target-domain "$t"
    done
  done
done
command chddl report
