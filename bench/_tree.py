"""Imported first by every bench script: the checkout the script lives in comes first on ``sys.path``.

With ``pip install -e .``, ``stages`` and ``chddl_cli`` resolve to the installed checkout unless the script's own
checkout is on the path before it. A bench run from a ``git worktree`` of another commit would then time the
installed code, and a comparison of two commits would time one of them twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))
