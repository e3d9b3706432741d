"""PEFT methods: a registry of functions that make exactly the intended parameters trainable.

    registry.py        @register_method: a method's facts beside its implementation (no torch)
    catalog.py         finds the method modules, lists and looks up methods (no torch)
    classification/    one module per method family for timm/transformers/custom classifiers
    t2i/               methods for the Stable Diffusion U-Net
    layers/            the torch modules some methods add (scale-shift, bottleneck, prompts, ...)
    common.py, qkv.py, peft_common.py, fast_lora.py   helpers the methods share
    accounting.py, budget.py    parameter counts on shape-only backbones, --param-budget
    docs.py            writes the docs' method tables from the registry
"""

from medpeft_cli.methods.catalog import capability_matrix, get_method, list_methods, method_catalog, speed_only_options
from medpeft_cli.methods.registry import (
    FAMILIES,
    FAMILY_DESCRIPTIONS,
    MethodInfo,
    check_supported,
    register_method,
    validate_options,
)

__all__ = [
    "FAMILIES", "FAMILY_DESCRIPTIONS", "MethodInfo", "capability_matrix", "check_supported", "get_method", "list_methods",
    "method_catalog", "register_method", "speed_only_options", "validate_options",
]  # fmt: skip
