#!/usr/bin/env bash
# Paper Table 3 (CIFAR-10 cross-architecture): the ConvNet-condensed IPC 10
# DM and DM+CHDDL sets trained on ConvNet, AlexNet, VGG11, ResNet18,
# ViT-Tiny and ViT-Small. Pass cifar10.sh's --workdir to reuse its IPC 10 DM
# sets (same settings, so they are cache hits). Data as for cifar10.sh.
#
#   bash bench/reproduce/cifar10_xarch.sh --scale cpu --data DIR
source "$(dirname "$0")/lib.sh"
cifar_scale
ipcs=10  # Table 3 is IPC 10 only: --ipcs does not apply
describe_scale
label_cifar
method_opts dm 10 cifar10
for seed in $(seeds_for dm); do
  for aware in --no-domain-aware --domain-aware; do
    chddl condense "${opts[@]}" "$aware" --seed "$seed"
    chddl evaluate --arch convnet,alexnet,vgg11,resnet18,vit_tiny,vit_small "${xarch_opts[@]}"
  done
done
command chddl report
