#!/usr/bin/env bash
# Paper Table 2: PACS multi-domain, DM, DC and MTT, each with and without
# CHDDL, at IPC 1 and 10; ConvNet accuracy overall and per true domain.
# Every condensation seed gets its own set; `chddl report` pools them and
# states CHDDL minus base with its standard error.
#
#   bash bench/reproduce/pacs_multidomain.sh --scale cpu --data $DATA [--seeds "0 1"]
#   METHODS="dm" bash bench/reproduce/pacs_multidomain.sh ...   # a subset of dm dc mtt
source "$(dirname "$0")/lib.sh"
describe_scale
evaluate_set() { chddl evaluate --arch convnet "${eval_opts[@]}"; }
chddl label "$pacs_source" --config "$pacs_preset"
methods_both_ways pacs
command chddl report
