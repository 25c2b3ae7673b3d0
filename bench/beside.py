"""What the fidelity benches share: a reference implementation's set stored beside ours in the workspace
(ours' metadata, its tensors), and both scored by ``chddl evaluate`` with one protocol."""

from __future__ import annotations

from typing import Any

import _tree  # noqa: F401  (this checkout first on sys.path)


def store_beside(ws, ours, repository: str, settings: dict, tensors: dict, seed: int, seconds: float, info=None):
    """Write the reference's set as a condensed artifact named after ``ours`` (``condensed-<base>_reference-…``),
    keyed by the repository, the settings and ours' key, holding ``tensors``; ``info`` replaces ours' entries."""
    from stages.artifacts import artifact_key

    key = artifact_key("condensed", {"reference": repository} | settings, {"ours": ours.key}, 1)
    return ws.write(
        stage="condensed",
        name=f"condensed-{ours.config['base']}_reference-ipc{ours.config['ipc']}-{key[:12]}",
        key=key,
        config=ours.config | {"reference": repository},
        inputs=ours.meta["inputs"],
        tensors=tensors,
        seed=seed,
        fingerprint=ours.meta.get("fingerprint"),
        info=ours.info | (info or {}),
        metrics={},
        cost={"wall_s": round(seconds, 3)},
    )


def score(ws, sets: dict, **evaluate: Any) -> dict:
    """``chddl evaluate`` of each set in ``sets`` (label -> artifact): its name, mean and std."""
    from stages import api

    out = {}
    for label, art in sets.items():
        ev = api.evaluate(str(art.path), workspace=ws, **evaluate).artifact
        (arch,) = ev.config["archs"]
        out[label] = {"set": art.name, "mean": ev.metrics[arch]["mean"], "std": ev.metrics[arch]["std"]}
    return out
