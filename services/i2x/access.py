"""What a remote caller may make a service touch: model factories and dataset folders.

The in-process library (i2x.engine, i2x.models, i2x.data) imports any factory and reads any
path its caller names: the caller is the program itself. A service's caller is anyone who can
reach its port, so the servicers check every model and dataset spec here first:

- `model.factory` ("package.module:function") only when I2X_MODEL_FACTORIES lists it (or
  "package.module:*"); empty by default, so a service imports nothing a caller names.
- `dataset.root` only inside a folder of I2X_DATA_ROOTS (after resolving '..' and symbolic
  links); empty by default, so a service reads only the built-in mnist5k.

A refusal says which setting to change and quotes at most a short prefix of the value; it never
says whether the path exists or what lies around it (the filesystem is not touched before the
path is known to be inside a root).
"""

from __future__ import annotations

import os

from i2x import config
from i2x.core.errors import InvalidArgument
from i2x.limits import quote


def _entries(setting: str) -> list[str]:
    return [part.strip() for part in config.get(setting).split(",") if part.strip()]


def allowed_factories() -> list[str]:
    return _entries("I2X_MODEL_FACTORIES")


def data_roots() -> list[str]:
    """The I2X_DATA_ROOTS folders, resolved (symbolic links and '..' followed)."""
    return [os.path.realpath(os.path.expanduser(root)) for root in _entries("I2X_DATA_ROOTS")]


def check_model(spec: dict, field: str = "model") -> dict:
    """`spec` (a ModelSpec dict) when its factory is allowed here; InvalidArgument otherwise."""
    factory = spec.get("factory")
    if factory is None and spec.get("arch") != "custom":
        return spec
    factory = str(factory or "")
    module = factory.split(":", 1)[0]
    allowed = allowed_factories()
    if factory and (factory in allowed or f"{module}:*" in allowed):
        return spec
    listed = f"it allows {allowed}" if allowed else "none is set, so custom models are off"
    raise InvalidArgument(f"this service builds custom models only from the factories in I2X_MODEL_FACTORIES "
                          f"({listed}); got {quote(factory)}: ask the operator to add it, or use a built-in "
                          "arch (small_cnn, resnet50, inception_v3)", field=f"{field}.factory")


def check_dataset(spec: dict, field: str = "dataset") -> dict:
    """`spec` (a DatasetSpec dict) when its root lies inside an I2X_DATA_ROOTS folder."""
    root = spec.get("root")
    if root in (None, ""):
        return spec
    roots = data_roots()
    if isinstance(root, str) and "\x00" not in root and os.path.isabs(root):
        resolved = os.path.realpath(root)
        for allowed in roots:
            if resolved == allowed or resolved.startswith(allowed.rstrip(os.sep) + os.sep):
                return spec
    where = (f"{len(roots)} folder(s) set there" if roots else "none is set, so only the built-in mnist5k is "
             "readable")
    raise InvalidArgument(f"this service reads datasets only from absolute paths inside the folders of "
                          f"I2X_DATA_ROOTS ({where}); {quote(str(root))} is not one: put the dataset there "
                          "or ask the operator to add its folder", field=f"{field}.root")
