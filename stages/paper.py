"""The paper's published figures (mean, std), for side-by-side reporting.

Keys: (dataset, method, ipc, arch). ``dataset`` is ``cifar10`` or ``pacs``;
``method`` is ``random``, ``whole``, ``dm``, ``dm+chddl``, ``dc``,
``dc+chddl``, ``mtt``, ``mtt+chddl``. Sources: Tables 1 (CIFAR-10,
ConvNet), 2 (PACS, ConvNet, 64 px) and 3 (CIFAR-10 IPC 10, other
architectures). The paper's protocol: 10 evaluation runs, 1,000 epochs.
"""

from __future__ import annotations

Figure = tuple[float, float]

PAPER: dict[tuple[str, str, int, str], Figure] = {
    # Table 1: CIFAR-10, ConvNet
    ("cifar10", "random", 1, "convnet"): (12.5, 0.8),
    ("cifar10", "random", 10, "convnet"): (25.1, 1.4),
    ("cifar10", "dc", 1, "convnet"): (27.4, 0.2),
    ("cifar10", "dc", 10, "convnet"): (43.3, 0.3),
    ("cifar10", "dc+chddl", 1, "convnet"): (29.0, 0.5),
    ("cifar10", "dc+chddl", 10, "convnet"): (45.4, 0.3),
    ("cifar10", "dm", 1, "convnet"): (24.7, 0.3),
    ("cifar10", "dm", 10, "convnet"): (47.4, 0.4),
    ("cifar10", "dm+chddl", 1, "convnet"): (27.1, 0.3),
    ("cifar10", "dm+chddl", 10, "convnet"): (49.8, 0.5),
    ("cifar10", "mtt", 1, "convnet"): (41.9, 0.4),
    ("cifar10", "mtt", 10, "convnet"): (50.7, 0.8),
    ("cifar10", "mtt+chddl", 1, "convnet"): (46.8, 0.4),
    ("cifar10", "mtt+chddl", 10, "convnet"): (57.9, 0.4),
    ("cifar10", "whole", 0, "convnet"): (84.8, 0.1),
    # Table 2: PACS (64 px), ConvNet
    ("pacs", "random", 1, "convnet"): (18.1, 2.6),
    ("pacs", "random", 10, "convnet"): (33.0, 0.8),
    ("pacs", "dc", 1, "convnet"): (35.3, 0.6),
    ("pacs", "dc", 10, "convnet"): (46.1, 0.7),
    ("pacs", "dc+chddl", 1, "convnet"): (38.8, 0.7),
    ("pacs", "dc+chddl", 10, "convnet"): (48.3, 0.5),
    ("pacs", "dm", 1, "convnet"): (28.7, 0.5),
    ("pacs", "dm", 10, "convnet"): (46.7, 0.5),
    ("pacs", "dm+chddl", 1, "convnet"): (34.7, 1.1),
    ("pacs", "dm+chddl", 10, "convnet"): (50.9, 0.4),
    ("pacs", "mtt", 1, "convnet"): (39.7, 0.6),
    ("pacs", "mtt", 10, "convnet"): (45.9, 0.8),
    ("pacs", "mtt+chddl", 1, "convnet"): (46.6, 0.9),
    ("pacs", "mtt+chddl", 10, "convnet"): (50.6, 0.6),
    ("pacs", "whole", 0, "convnet"): (72.0, 0.8),
}

# Table 3: CIFAR-10 IPC 10 condensed with ConvNet, evaluated on other architectures
for _method, _row in {
    "dc": [(15.0, 3.4), (34.6, 0.2), (18.7, 0.5), (21.7, 0.6), (21.7, 0.5)],
    "dc+chddl": [(22.8, 1.2), (35.9, 0.4), (19.5, 0.6), (22.4, 0.4), (22.4, 0.4)],
    "dm": [(36.1, 0.4), (39.9, 0.3), (36.9, 0.8), (26.6, 0.5), (27.1, 0.5)],
    "dm+chddl": [(39.0, 0.3), (40.9, 0.7), (39.8, 1.0), (26.9, 0.5), (27.4, 0.4)],
    "mtt": [(23.2, 1.3), (45.7, 0.8), (38.9, 0.8), (20.3, 1.4), (22.5, 0.7)],
    "mtt+chddl": [(24.0, 1.0), (46.6, 0.9), (41.1, 0.7), (20.5, 0.8), (22.8, 1.0)],
}.items():
    for _arch, _fig in zip(("alexnet", "vgg11", "resnet18", "vit_tiny", "vit_small"), _row):
        PAPER[("cifar10", _method, 10, _arch)] = _fig


def dataset_family(source: str) -> str | None:
    """``pacs`` or ``cifar10`` when a dataset's source name says so."""
    name = source.lower()
    if "pacs" in name:
        return "pacs"
    if "cifar10" in name.replace("-", "").replace("_", "") and "cifar100" not in name.replace("-", "").replace("_", ""):
        return "cifar10"
    return None


def paper_figure(source: str, method: str, ipc: int, arch: str) -> Figure | None:
    """The paper's figure for this setting, if it published one."""
    family = dataset_family(source)
    return PAPER.get((family, method, ipc, arch)) if family else None
