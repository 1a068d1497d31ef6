"""The error tree in `gateway/errors.py` is true: every exception class the gateway's
packages define is in its docstring, and the HTTP mapping names only classes of the tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import gateway.errors
from gateway.errors import HTTP_ERROR_HANDLERS

PACKAGES = ("audio", "telephony", "gateway", "storage", "webhooks")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            names.append(info.name)
    return names


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{name}.{value.__name__}"] = value
    return found


def test_every_exception_is_in_the_documented_tree() -> None:
    doc = gateway.errors.__doc__ or ""
    defined = _defined_exceptions()
    assert len(defined) >= 20
    missing = [name for name, cls in defined.items() if cls.__name__ not in doc]
    assert not missing, f"exceptions missing from gateway/errors.py's tree: {missing}"


def test_the_http_mapping_uses_the_tree() -> None:
    doc = gateway.errors.__doc__ or ""
    for cls in HTTP_ERROR_HANDLERS:
        assert cls.__name__ in doc or cls.__module__.startswith("starlette"), cls
