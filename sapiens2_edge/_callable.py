"""``s2e.quantize(...)`` and ``s2e.export(...)`` are verbs, but ``quantize`` and ``export`` are also
subpackages, and importing a subpackage makes it the parent's attribute. So those two modules
are made callable: calling the module calls its verb, whichever way it was reached."""

from __future__ import annotations

import sys
import types
from typing import Callable


def make_module_callable(module_name: str, verb: Callable) -> None:
    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return verb(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
