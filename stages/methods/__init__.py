"""Base condensation methods (DM, DC, MTT, SRe2L, ...) behind one interface.

A method is one module of this package that registers a :class:`~stages.methods.base.MethodSpec` in
:data:`METHODS`; every module here is imported, so adding a method touches no other file."""

import importlib
import pkgutil

from stages.methods.base import METHODS, BaseMethod, MatchBatch, MethodContext, MethodSpec, RealPool  # noqa: F401

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
