"""Stage modules that can be called: ``edgedl.train(...)`` runs ``edgedl.train.train(...)``.

``edgedl.train``, ``edgedl.optimize`` and ``edgedl.bench`` are modules (their helpers and option
types live there) and, in the public API, functions. Python binds a package's attribute to its
submodule when the submodule is imported, so a function of the same name in ``edgedl/__init__.py``
would be replaced by the module on first import; instead each stage module calls
:func:`callable_module` last, and the module itself is callable.
"""

from __future__ import annotations

import sys
import types


class StageModule(types.ModuleType):
    """A stage's module that, called, runs its function of the same name."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def callable_module(name: str) -> None:
    """Make the (already loaded) module ``name`` callable as its stage function."""
    sys.modules[name].__class__ = StageModule
