"""Modules that can be called: ``ckd.evaluate(...)`` and ``ckd.compare(...)`` call the function of
the module's name, whichever of the module and the function ``ckd.<name>`` holds (``ckd`` loads
its names lazily, and importing the submodule sets the package attribute to the module)."""

from __future__ import annotations

import sys
import types


class CallableModule(types.ModuleType):
    """A module whose call is its function of the same name."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Make the loaded module ``module_name`` callable as its function of the same name."""
    sys.modules[module_name].__class__ = CallableModule
