#!/usr/bin/env bash
# Paper Table 2: PACS multi-domain, DM, DC and MTT, each with and without
# CHDDL, at IPC 1 and 10; ConvNet accuracy overall and per true domain.
# Every condensation seed gets its own set; `chddl report` pools them and
# states CHDDL minus base with its standard error.
#
#   bash bench/reproduce/pacs_multidomain.sh --scale cpu --data ../shared/data [--seeds "0 1"]
#   METHODS="dm" bash bench/reproduce/pacs_multidomain.sh ...   # a subset of dm dc mtt
source "$(dirname "$0")/lib.sh"
describe_scale
methods=${METHODS:-dm dc mtt}
chddl label "$pacs_source" --config "$pacs_preset"
for method in $methods; do
  if [ "$method" = mtt ]; then chddl pretrain-experts "${experts[@]}"; fi
  for ipc in 1 10; do
    method_opts "$method" "$ipc" pacs
    for seed in $(seeds_for "$method"); do
      for aware in --no-domain-aware --domain-aware; do
        chddl condense "${opts[@]}" "$aware" --seed "$seed"
        chddl evaluate --arch convnet "${eval_opts[@]}"
      done
    done
  done
done
command chddl report
