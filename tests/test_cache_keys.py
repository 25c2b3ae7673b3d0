"""Cache keys of condensed sets are stable across refactors: users' workspaces stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.artifacts import artifact_key
from stages.condense import SCHEMA_VERSION, STAGE, CondenseConfig
from stages.config import build

ROOT = Path(__file__).resolve().parents[1]

#: keys computed before the base methods became declared specs (commit of this test), input {"dataset": "d0"}
PINNED = [
    ({}, "b4d7a930250d"),
    ({"domain_aware": False}, "b8fd2a974436"),
    ({"base": "dc", "ipc": 10}, "a52010e0c8a2"),
    ({"base": "dc", "theta_prime": "shared", "ipc": 1}, "f834e297325d"),
    (
        {"base": "mtt", "ipc": 1, "syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 10, "lr_img": 10000},
        "3c490b821602",  # was b9c15d067dcd: MTT + CHDDL's domain student now defaults to ceil(syn_steps / D) steps
    ),
    ({"base": "mtt", "domain_aware": False, "checkpoint_student": False}, "a25db2536a11"),
    ({"base": "mtt", "theta_prime": "shared", "domain_syn_steps": 5}, "f875b84b0173"),
    ({"base": "sre2l", "ipc": 10}, "a88bacee2d59"),
    ({"base": "sre2l", "domain_aware": False, "r_bn": 0.05}, "46ca93ccc30b"),
    ({"mask_optimizer": "adam", "tau": 0.5}, "b04a0b90d861"),
    ({"schedule": "algorithm1", "domain_lambda": False}, "bdcf4eee0f2b"),
    ({"mask_resolution": 1, "mask_channels": "shared", "init": "real"}, "c24dd3149fd8"),
    ({"theta_prime": "shared", "domains": ("photo",)}, "63f3a610e359"),
    ({"base": "dc", "domain_aware": False, "exclude_domain": "sketch", "lr_net": 0.05}, "8afbb24b531f"),
]


@pytest.mark.parametrize("values, key", PINNED)
def test_a_configuration_keeps_its_cache_key(values, key) -> None:
    cfg = build(CondenseConfig, values).resolved()
    assert artifact_key(STAGE, cfg.key_fields(), {"dataset": "d0"}, SCHEMA_VERSION) == key


@pytest.mark.parametrize("folder", sorted((ROOT / "results").glob("*/condensed-*")), ids=lambda p: p.name)
def test_the_committed_condensed_sets_keep_their_keys(folder) -> None:
    meta = yaml.safe_load((folder / "meta.yaml").read_text())
    cfg = build(CondenseConfig, meta["config"]).resolved()
    inputs = {k: name.rsplit("-", 1)[1] for k, name in meta["inputs"].items()}
    assert artifact_key(STAGE, cfg.key_fields(), inputs, meta["schema_version"]) == meta["key"]
