#!/usr/bin/env bash
# The open decisions of docs/design.md, tried where CHDDL should help most (paper
# Table 2: DM +6.0 at PACS IPC 1): DM+CHDDL at IPC 1 with Algorithm 1's
# sequential schedule, separate real draws for the domain loss, lambda 0.01
# and 1, random (normal) mask init, mask learning rate 0.1 and 10 (images: 1),
# Adam for the masks (lr 0.01 and 0.001), temperature tau 0.01 and 1, and FFT
# labels with beta 0.05 (the crop that agrees best with the true domains);
# DM and default DM+CHDDL as the reference lines. Then DC and MTT at IPC 1
# with Theta' shared (the domain loss on the class loss's network / experts
# instead of their own). Every variant is one `chddl condense` option.
#
#   bash bench/reproduce/pacs_chddl_variants.sh --scale cpu --data $DATA
source "$(dirname "$0")/lib.sh"
describe_scale
method_opts dm 1 pacs
for seed in $(seeds_for variants); do
  chddl label "$pacs_source" --config "$pacs_preset"
  for variant in "--no-domain-aware" "--domain-aware" "--domain-aware --schedule sequential" \
                 "--domain-aware --no-share-real" "--domain-aware --lam 0.01" "--domain-aware --lam 1" \
                 "--domain-aware --mask-init-mode normal" "--domain-aware --mask-lr 0.1" "--domain-aware --mask-lr 10" \
                 "--domain-aware --tau 1" "--domain-aware --tau 0.01" "--domain-aware --mask-optimizer adam" \
                 "--domain-aware --mask-optimizer adam --mask-lr 0.001"; do
    # shellcheck disable=SC2086  # each variant is a list of options
    chddl condense "${opts[@]}" $variant --seed "$seed"
    chddl evaluate "${eval_opts[@]}"
  done
  chddl label "$pacs_source" --config "$pacs_preset" --beta 0.05
  chddl condense "${opts[@]}" --domain-aware --seed "$seed"
  chddl evaluate "${eval_opts[@]}"
  # Theta' of the domain loss: DC's and MTT's own (a second network, the pseudo-domain experts) vs the class loss's.
  chddl label "$pacs_source" --config "$pacs_preset"
  for method in dc mtt; do
    if [ "$method" = mtt ]; then chddl pretrain-experts "${experts[@]}"; fi
    method_opts "$method" 1 pacs
    for variant in "--no-domain-aware" "--domain-aware" "--domain-aware --theta-prime shared"; do
      # shellcheck disable=SC2086
      chddl condense "${opts[@]}" $variant --seed "$seed"
      chddl evaluate "${eval_opts[@]}"
    done
  done
  method_opts dm 1 pacs
done
command chddl report
