#!/usr/bin/env bash
# Paper Table 1 (CIFAR-10, single domain): DM, DC and MTT with and without
# CHDDL at IPC 1 and 10, scored by ConvNet. The data is cifar10_jpeg.tar.gz
# extracted under --data (cifar10/train/<class>, cifar10/test/<class>); MTT
# runs on the plain images (add --zca to the label command for the
# reference's ZCA setting). Table 3 is cifar10_xarch.sh.
#
#   bash bench/reproduce/cifar10.sh --scale cpu --data DIR
source "$(dirname "$0")/lib.sh"
cifar_scale
describe_scale
evaluate_set() { chddl evaluate --arch convnet "${eval_opts[@]}"; }
label_cifar
methods_both_ways cifar10
command chddl report
