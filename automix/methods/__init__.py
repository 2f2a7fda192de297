"""Fine-tuning methods, selectable by name: ``get_method("qlora").prepare(model, layers, ...)``.

The registry is lazy (name -> "module:Class") so importing ``automix.methods`` stays cheap and
a method's module is imported only when asked for. See :mod:`automix.methods.base` for the
interface and :mod:`automix.methods.adapters` for the shared LoRA / quantization helpers.
"""

from __future__ import annotations

import importlib

from automix.methods.base import MemoryProfile, Method, MethodError, MethodSettings

REGISTRY: dict[str, str] = {
    "lora": "automix.methods.lora:LoRA",
    "qlora": "automix.methods.qlora:QLoRA",
    "loftq": "automix.methods.loftq:LoftQ",
    "quailora": "automix.methods.quailora:QuAILoRA",
    "apiq": "automix.methods.apiq:ApiQ",
    "apiq-lw": "automix.methods.apiq:ApiQLayerwise",
    "qst": "automix.methods.qst:QST",
    "qeft": "automix.methods.qeft:QEFT",
}


def available_methods() -> list[str]:
    """Every method name the registry knows, in a stable order."""
    return list(REGISTRY)


def get_method(name: str) -> Method:
    """An instance of the method called ``name``.

    Unknown names raise ``ValueError`` listing the available methods; a registered method whose
    module or class is not there raises ``MethodError`` saying so.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(available_methods())}")
    module_name, _, cls_name = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise MethodError(f"method {name!r} is registered but its module {module_name} is not "
                              "installed in this build") from err
        raise
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise MethodError(f"method {name!r}: {module_name} has no class {cls_name}")
    return cls()


__all__ = ["REGISTRY", "MemoryProfile", "Method", "MethodError", "MethodSettings",
           "available_methods", "get_method"]
