"""Base condensation methods (DM, DC, ...) behind one interface."""

from stages.methods import dc, dm, mtt, sre2l  # noqa: F401  (register their entries)
from stages.methods.base import METHODS, BaseMethod, MatchBatch, RealPool  # noqa: F401
