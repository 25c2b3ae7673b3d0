"""Reading expert trajectories: two snapshots at a time, memory-mapped.

Only the start and target snapshots of one expert are read per use (through
safetensors' lazy reader), never whole files.
"""

from __future__ import annotations

import hashlib

import safetensors
import torch

from stages.artifacts import Artifact
from stages.device import to_device
from stages.errors import ChddlError


class ExpertStore:
    """The expert sets of an ``experts`` artifact, checked file by file."""

    def __init__(self, art: Artifact, verify: bool = True) -> None:
        if art.stage != "experts":
            raise ChddlError(
                f"{art.path} is a '{art.stage}' artifact, not experts; create them with `chddl pretrain-experts`"
            )
        self.art, self.info = art, art.info
        self.names = list(self.info["parameters"])
        self.shapes = [torch.Size(s) for s in self.info["parameters"].values()]
        self.epochs = int(self.info["epochs"])
        self.num_experts = int(self.info["num_experts"])
        self._checked: set[str] = set()
        self.verify = verify
        for fname, expected in self.info["files"].items():
            path = art.path / fname
            if not path.is_file() or path.stat().st_size != expected["bytes"]:
                raise ChddlError(
                    f"expert file {path} is missing or truncated; delete {art.path} and re-run chddl pretrain-experts"
                )

    def check_compatible(self, arch: str, image_size: int, num_classes: int, mean, std, need_domains: int) -> None:
        """Refuse experts trained on another architecture, size, class count or normalisation."""
        info = self.info
        for what, ours, theirs in (
            ("architecture", arch, info["arch"]),
            ("image size", image_size, info["image_size"]),
            ("number of classes", num_classes, info["num_classes"]),
        ):
            if ours != theirs:
                raise ChddlError(
                    f"experts {self.art.name} were trained with {what} {theirs}, but condensation uses {ours}; "
                    "re-run chddl pretrain-experts on this dataset"
                )
        if [round(float(v), 5) for v in mean] != [round(float(v), 5) for v in info["normalization"]["mean"]] or [
            round(float(v), 5) for v in std
        ] != [round(float(v), 5) for v in info["normalization"]["std"]]:
            raise ChddlError(f"experts {self.art.name} were trained with another normalisation than this dataset's")
        if need_domains and f"domain{need_domains - 1}" not in info["sets"]:
            raise ChddlError(
                f"experts {self.art.name} have no domain experts for {need_domains} pseudo-domains; "
                "re-run chddl pretrain-experts with these labels, or condense with --theta-prime shared"
            )

    def _check_file(self, fname: str) -> None:
        if not self.verify or fname in self._checked:
            return
        h = hashlib.blake2b(digest_size=16)
        with (self.art.path / fname).open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        if h.hexdigest() != self.info["files"][fname]["blake2b"]:
            raise ChddlError(
                f"expert file {self.art.path / fname} is corrupt (checksum mismatch); re-run chddl pretrain-experts "
                "--force"
            )
        self._checked.add(fname)

    def pair(self, role: str, k: int, start: int, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat float32 parameters of expert ``k`` of set ``role`` at epochs ``start`` and ``end``."""
        fname = f"{role}_expert_{k:04d}.safetensors"
        if fname not in self.info["files"]:
            raise ChddlError(f"experts {self.art.name} have no file {fname}")
        self._check_file(fname)
        with safetensors.safe_open(str(self.art.path / fname), framework="pt") as fh:
            flat = [
                torch.cat([fh.get_tensor(f"{e:03d}/{n}").float().flatten() for n in self.names]) for e in (start, end)
            ]
        return to_device(flat[0], device), to_device(flat[1], device)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter dict (for torch.func.functional_call) from a flat vector."""
        return unflatten(flat, self.names, self.shapes)


def unflatten(flat: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    """The parameters ``names`` of ``shapes``, in that order, as views into the flat vector ``flat``."""
    out, i = {}, 0
    for name, shape in zip(names, shapes):
        out[name] = flat[i : i + shape.numel()].view(shape)
        i += shape.numel()
    return out
