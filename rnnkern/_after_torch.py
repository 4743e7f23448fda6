"""Runs a function once ``import torch`` has finished, without importing torch itself."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Callable, List

_pending: List[Callable[[], object]] = []


class _TorchImportWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when torch is about to be imported, wraps its loader so that
    the pending functions run right after torch's module body."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_run(module) -> None:
            exec_module(module)
            for function in _pending:
                try:
                    function()
                except Exception as error:  # never break the user's import of torch
                    warnings.warn(f"rnnkern: {function!r} after importing torch: {error}")
            _pending.clear()

        spec.loader.exec_module = exec_then_run
        return spec


def call_after_torch_import(function: Callable[[], object]) -> None:
    """Calls ``function`` when torch has been imported (now, if it already is)."""
    if "torch" in sys.modules:
        function()
        return
    if not _pending:
        sys.meta_path.insert(0, _TorchImportWatcher())
    _pending.append(function)
