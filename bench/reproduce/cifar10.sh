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
evaluate_set() {
  if [ "$1" = dm ] && [ "$2" = 10 ]; then  # Table 3 from the same sets
    chddl evaluate --arch convnet,alexnet,vgg11,resnet18,vit_tiny,vit_small "${xarch_opts[@]}"
  else
    chddl evaluate --arch convnet "${eval_opts[@]}"
  fi
}
chddl label "$cifar_source" --config "$cifar_preset"
methods_both_ways cifar10
command chddl report
