"""The runnable examples in the kernels' docstrings stay runnable."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["kernels.backend", "kernels.clahe", "kernels.morphology", "kernels.otsu", "kernels.pores", "kernels.threshold", "kernels.warmup"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module_name} has no docstring example"
    assert result.failed == 0
