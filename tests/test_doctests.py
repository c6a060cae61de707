"""Every example in the docstrings of rag/ and api/ runs and holds."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import api
import rag

MODULES = sorted(
    m.name
    for pkg in (rag, api)
    for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}.")
    if not m.name.endswith(".__main__")  # importing it would run the CLI
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
