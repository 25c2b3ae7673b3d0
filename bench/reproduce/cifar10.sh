#!/usr/bin/env bash
# Paper Table 1 (CIFAR-10, single domain: DM, DC, MTT with and without
# CHDDL at IPC 1 and 10) and Table 3 (the ConvNet-condensed IPC 10 DM and
# DM+CHDDL sets trained on ConvNet, AlexNet, VGG11, ResNet18, ViT-Tiny and
# ViT-Small). The data is cifar10_jpeg.tar.gz extracted under --data
# (cifar10/train/<class>, cifar10/test/<class>); MTT runs on the plain
# images (add --zca to the label command for the reference's ZCA setting).
#
#   bash bench/reproduce/cifar10.sh --scale cpu --data DIR
source "$(dirname "$0")/lib.sh"
describe_scale
chddl label "$cifar_source" --config "$cifar_preset"
for method in ${METHODS:-dm dc mtt}; do
  if [ "$method" = mtt ]; then chddl pretrain-experts "${experts[@]}"; fi
  for ipc in 1 10; do
    method_opts "$method" "$ipc" cifar10
    for seed in $(seeds_for "$method"); do
      for aware in --no-domain-aware --domain-aware; do
        chddl condense "${opts[@]}" "$aware" --seed "$seed"
        if [ "$method" = dm ] && [ "$ipc" = 10 ]; then  # Table 3 from the same sets
          chddl evaluate --arch convnet,alexnet,vgg11,resnet18,vit_tiny,vit_small "${xarch_opts[@]}"
        else
          chddl evaluate --arch convnet "${eval_opts[@]}"
        fi
      done
    done
  done
done
command chddl report
