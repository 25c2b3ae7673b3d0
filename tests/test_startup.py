"""Starting the CLI imports neither torchvision's models nor matplotlib: every command, `--help` included,
would pay for them (1-2 s at each start) while only some architectures and the report's figures use them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_starting_the_cli_leaves_torchvision_models_and_matplotlib_unimported() -> None:
    code = (
        "import sys, chddl_cli.app; print(sorted(m for m in ('torchvision.models', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_torchvision_network_is_still_built_on_demand() -> None:
    from stages.models import create_model

    net = create_model("resnet18", num_classes=3, image_size=32)
    assert type(net).__module__ == "stages.models.torchvision_nets"
    assert net.embed(__import__("torch").zeros(2, 3, 32, 32)).shape == (2, 512)
