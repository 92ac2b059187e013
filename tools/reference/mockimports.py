"""Import stubs for packages the official code imports but the reference never exercises.

Any module under one of MOCKED (e.g. torchvision, used only by Dassl's data pipeline) is
replaced by a MagicMock module. Nothing the reference computes goes through these stubs.
"""

import importlib.abc
import importlib.machinery
import sys
import types
from unittest.mock import MagicMock


class _MockModule(types.ModuleType):
    def __init__(self, name):
        super().__init__(name)
        self.__path__ = []  # acts as a package so submodules import too
        self.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = MagicMock(name=f"{self.__name__}.{attr}")
        setattr(self, attr, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, prefixes):
        self.prefixes = tuple(prefixes)

    def find_spec(self, fullname, path, target=None):
        if any(fullname == p or fullname.startswith(p + ".") for p in self.prefixes):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _MockModule(spec.name)

    def exec_module(self, module):
        pass


def install(prefixes):
    sys.meta_path.insert(0, _Finder(prefixes))


class mocked:
    """Context manager: the stubs exist only while the official modules are imported.

    Afterwards the finder and the stub entries are removed from sys.modules (so e.g.
    transformers, imported later, still sees that torchvision is not installed); the official
    modules keep their references to the stub objects.
    """

    def __init__(self, prefixes):
        self.finder = _Finder(prefixes)

    def __enter__(self):
        sys.meta_path.insert(0, self.finder)
        return self

    def __exit__(self, *exc):
        sys.meta_path.remove(self.finder)
        for name in list(sys.modules):
            if isinstance(sys.modules[name], _MockModule):
                del sys.modules[name]
        return False
