"""DM: distribution matching (Zhao and Bilen, 2023).

Each round draws a fresh randomly initialised network that is never
trained; the loss is, summed over groups, the squared distance between the
mean embeddings (penultimate features) of the augmented real and synthetic
images. All groups go through the network in one batch: with instance norm
every image is processed independently, so this equals the reference's
per-class loop. Theta' (the domain role) is the same network, as in the
paper's appendix A.1.
"""

from __future__ import annotations

import torch

from stages.data.augment import DSA
from stages.methods.base import METHODS, BaseMethod, MatchBatch, RealPool
from stages.methods.common import NetFactory, RoleNets, augmented_pair, group_means, real_images


class DM(BaseMethod):
    default_lambda = 0.1

    def __init__(self, net_factory: NetFactory, device: torch.device, dsa: DSA | None, compile_embed: bool = False) -> None:
        self.nets = RoleNets(net_factory, device)
        self.dsa = dsa
        self._embed = torch.compile(lambda net, x: net.embed(x), dynamic=True) if compile_embed else (lambda net, x: net.embed(x))

    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        self.nets.renew(roles, g, shared=True)
        for net in set(self.nets.nets.values()):
            net.requires_grad_(False)

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        net = self.nets[role]
        real, syn = augmented_pair(self.dsa, batch, real_images(pool, batch), g)
        with torch.no_grad():
            real_mean, real_present = group_means(self._embed(net, real.contiguous(memory_format=torch.channels_last)), batch.real_groups, batch.num_groups)
        syn_mean, syn_present = group_means(net.embed(syn.contiguous(memory_format=torch.channels_last)), batch.syn_groups, batch.num_groups)
        present = (real_present & syn_present).unsqueeze(1)
        return ((real_mean - syn_mean) ** 2 * present).sum()


@METHODS.register("dm")
def dm(net_factory: NetFactory, device: torch.device, dsa: DSA | None, compile_embed: bool = False, **_: object) -> DM:
    """Distribution matching on fresh random networks."""
    return DM(net_factory, device, dsa, compile_embed)
