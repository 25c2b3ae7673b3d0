#!/usr/bin/env bash
# Paper Table A: SRe2L and SRe2L + CHDDL on PACS, with every set scored two
# ways: with hard labels (the protocol of every other table) and with the
# teacher's soft labels (SRe2L's relabelling, done online), each beside the
# random real baseline of the same protocol (soft labels lift random real
# images too). SRE2L_IPCS (env, default "10"; the paper also has 50) picks
# the IPCs; PARTS (env, default "sets") adds "whole": the whole training
# split under both protocols (1 run of WHOLE_EPOCHS, default 30). SRE2L_ITERS
# (env) sets the recover iterations at cpu scale (default SRe2L's 1,000).
#
#   bash bench/reproduce/sre2l.sh --scale cpu --data $DATA --workdir /tmp/sre2l32
source "$(dirname "$0")/lib.sh"
describe_scale
sre2l_ipcs=${SRE2L_IPCS:-10}
parts=${PARTS:-sets}
case "$scale" in
  smoke) teacher_opts=(--epochs 2); sre2l_iters=4; sre2l_ipcs=2 ;;
  # recover_cifar.sh's 1,000 iterations; SRE2L_ITERS (env) shortens them (SRe2L + CHDDL at IPC 10 runs ~5x
  # the images through the teacher: about 2.5 s/it on one core)
  cpu) teacher_opts=(--epochs 30); sre2l_iters=${SRE2L_ITERS:-1000} ;;
  full) teacher_opts=(--arch resnet18_bn --epochs 200); sre2l_iters=1000 ;;
esac
echo "   SRe2L: teacher ${teacher_opts[*]}, $sre2l_iters recover iterations, IPC $sre2l_ipcs; parts: $parts"

chddl label "$pacs_source" --config "$pacs_preset"
teacher=$(chddl train-teacher "${teacher_opts[@]}" | sed -n 's/^teacher: //p')
echo "   teacher: $teacher"
# both protocols of the last condensed set or of a baseline (options passed on)
score() {
  chddl evaluate --arch convnet "${eval_opts[@]}" "$@"
  chddl evaluate --arch convnet "${eval_opts[@]}" "$@" --soft-labels "$teacher"
}
for part in $parts; do
  case $part in
    sets)
      for ipc in $sre2l_ipcs; do
        for seed in $seeds; do
          score --baseline random --ipc "$ipc" --seed "$seed"
          for aware in --no-domain-aware --domain-aware; do
            # the set by path, not "the workspace's latest": runs of other seeds may share the workspace
            set=$(chddl condense --base sre2l --ipc "$ipc" --iterations "$sre2l_iters" --teacher "$teacher" $aware \
                    --seed "$seed" | sed -n 's/^condensed: //p')
            score "$set"
          done
        done
      done ;;
    whole)
      epochs=${WHOLE_EPOCHS:-30}; if [ "$scale" = smoke ]; then epochs=1; fi
      chddl evaluate --baseline whole --arch convnet --runs 1 --epochs "$epochs"
      chddl evaluate --baseline whole --arch convnet --runs 1 --epochs "$epochs" --soft-labels "$teacher" ;;
    *) echo "unknown part $part (valid: sets whole)" >&2; exit 2 ;;
  esac
done
command chddl report
