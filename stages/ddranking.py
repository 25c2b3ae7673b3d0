"""Which of DD-Ranking's datasets a chddl dataset is, and the fixed per-channel statistics DD-Ranking
normalises that dataset's real images with.

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, 0.2) feeds an exported ``images.pt`` to its networks as it is and
normalises the real data it compares against with fixed statistics per dataset; chddl normalises with the
statistics of each dataset's own training split. An export for DD-Ranking therefore re-expresses the
images in DD-Ranking's statistics when it knows the dataset: the same pixels, normalised as DD-Ranking
normalises the real ones. Only the datasets whose class order is also DD-Ranking's are recognised, so
``labels.pt`` means the same classes there.
"""

from __future__ import annotations

import torch

CIFAR_STATISTICS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATISTICS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
    telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()
)

#: DD-Ranking's dataset name -> (mean, std) it normalises with
STATISTICS = {
    "CIFAR10": CIFAR_STATISTICS,
    "CIFAR100": CIFAR_STATISTICS,
    "TinyImageNet": IMAGENET_STATISTICS,
}


def known_dataset(class_names: list[str], size: int, source_format: str | None) -> str | None:
    """DD-Ranking's name for the dataset with these classes (in this order), image size and source format
    (the dataset artifact's ``format``), or None when DD-Ranking does not know it as chddl holds it."""
    names = tuple(class_names)
    if size == 32 and names == CIFAR10_CLASSES:
        return "CIFAR10"
    if size == 32 and names == CIFAR100_CLASSES:
        return "CIFAR100"
    # Tiny ImageNet read from its own tree: classes in sorted-wnid order, as DD-Ranking's ImageFolder has them
    if size == 64 and len(names) == 200 and source_format == "folder/tiny-imagenet":
        return "TinyImageNet"
    return None


def renormalised(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, name: str) -> torch.Tensor:
    """``images`` normalised with (``mean``, ``std``) re-expressed in DD-Ranking's statistics for ``name``."""
    dd_mean, dd_std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in STATISTICS[name])
    pixels = images.float() * std.float().view(1, 3, 1, 1) + mean.float().view(1, 3, 1, 1)
    return (pixels - dd_mean) / dd_std
