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

from typing import Callable

import torch

from stages.data.augment import DSA, DSAParams
from stages.methods.base import METHODS, BaseMethod, MatchBatch, MethodContext, MethodSpec, RealPool
from stages.methods.common import (
    Embedding,
    NetFactory,
    RoleNets,
    embed_real,
    embed_views_with_recompute,
    embed_with_recompute,
    mean_distance,
)


class DM(BaseMethod):
    default_lambda = 0.1
    sums_statistics = True
    lazy_views = True

    def __init__(self, net_factory: NetFactory, device: torch.device, dsa: DSA | None, compiled: bool = False) -> None:
        self.nets = RoleNets(net_factory, device)
        self.dsa = dsa
        self.embedding = Embedding(compiled=compiled)

    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        self.nets.renew(roles, g, shared=True)
        for net in set(self.nets.nets.values()):
            net.requires_grad_(False)

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        net = self.nets[role]
        params = augment = None
        if self.dsa is not None:
            groups = self.dsa.sample(batch.num_groups, tuple(batch.syn.shape[-2:]), g)
            params, augment = groups.index(batch.real_groups), self._augment(groups.index(batch.syn_groups.cpu()))
        real = embed_real(self.embedding.forward, net, pool, batch.real_index, self.dsa, params)
        return mean_distance(
            real, embed_with_recompute(net, batch.syn, augment=augment, embedding=self.embedding), batch
        )

    def _augment(self, params: DSAParams) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Augmentation of synthetic images by their row in the batch (``params`` has one entry per row)."""
        return lambda part, rows: self.dsa.apply(part, params.index(rows))

    def joint_loss(
        self,
        class_batch: MatchBatch,
        domain_batch: MatchBatch,
        pool: RealPool,
        real_weights: torch.Tensor,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Augmentation is siamese per class on both losses: real images of
        # class c, synthetic images of class c and the views of those images
        # share one transform.
        net = self.nets["class"]
        n_syn = len(class_batch.syn)
        syn_classes = torch.cat([class_batch.syn_labels, domain_batch.syn_labels]).cpu()
        real_params = augment = None
        if self.dsa is not None:
            params = self.dsa.sample(class_batch.num_groups, tuple(class_batch.syn.shape[-2:]), g)
            real_params, augment = params.index(class_batch.real_groups), self._augment(params.index(syn_classes))
        real_emb = embed_real(self.embedding.forward, net, pool, class_batch.real_index, self.dsa, real_params)
        # the views and their augmentation are recomputed chunk by chunk in the backward pass, not kept
        if domain_batch.masks is not None:  # the views made here, chunk by chunk, from the images and masks
            syn_emb = embed_with_recompute(net, class_batch.syn, augment=augment, embedding=self.embedding)
            view_emb = embed_views_with_recompute(
                net,
                domain_batch.syn,
                domain_batch.masks,
                augment=augment,
                first_row=n_syn,
                domain=domain_batch.view_domain,
                embedding=self.embedding,
            )
        else:
            emb = embed_with_recompute(
                net, torch.cat([class_batch.syn, domain_batch.syn]), augment=augment, embedding=self.embedding
            )
            syn_emb, view_emb = emb[:n_syn], emb[n_syn:]
        return (
            mean_distance(real_emb, syn_emb, class_batch),
            mean_distance(real_emb, view_emb, domain_batch, real_weights=real_weights),
        )


def _build(ctx: MethodContext) -> DM:
    return DM(ctx.net_factory, ctx.device, ctx.dsa, ctx.compile_hot_path)


METHODS.register("dm")(
    MethodSpec(
        name="dm",
        summary="distribution matching on fresh random networks",
        build=_build,
        defaults={"iterations": 20000, "lr_img": 1.0, "dsa": True, "lam": 0.1},
        theta_prime=("shared",),
        theta_prime_why="its Theta' is the class loss's random network by construction (docs/design.md)",
        needs_embedding=True,
        shares_real_pass=True,
        domain_terms="sum",
        compile_from=2000,
    )
)
