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
  for ipc in 1 10; do
    case $method in
      dm) opts=(--base dm --ipc "$ipc" --iterations "$dm_iters" --batch-real "$batch_real")
          if [ "$ipc" = 10 ]; then opts+=(--init "$dm10_init"); fi ;;
      dc) opts=(--base dc --ipc "$ipc" --iterations "$([ "$ipc" = 1 ] && echo "$dc_iters" || echo "$dc10_iters")")
          if [ "$scale" = smoke ]; then opts+=(--batch-real 16); fi ;;
      mtt) chddl pretrain-experts "${experts[@]}"
           preset=mtt_pacs_ipc$ipc; if [ "$scale" = smoke ]; then preset=mtt_pacs_ipc1; fi
           opts=(--config "$preset" --ipc "$ipc" --iterations "$mtt_iters" "${mtt_opts[@]}")
           # cpu-scale experts have 12 epochs: the IPC 10 presets' start epochs (20, 40) are capped at 10
           if [ "$scale" = cpu ] && [ "$ipc" = 10 ]; then opts+=(--max-start-epoch 10); fi ;;
    esac
    for seed in $(seeds_for "$method"); do
      for aware in --no-domain-aware --domain-aware; do
        chddl condense "${opts[@]}" "$aware" --seed "$seed"
        chddl evaluate --arch convnet "${eval_opts[@]}"
      done
    done
  done
done
command chddl report
