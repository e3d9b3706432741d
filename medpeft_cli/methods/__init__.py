"""PEFT methods: a registry of functions that make exactly the intended parameters trainable."""

from medpeft_cli.methods.registry import (
    FAMILIES,
    FAMILY_DESCRIPTIONS,
    capability_matrix,
    MethodInfo,
    check_supported,
    get_method,
    list_methods,
    register_method,
    validate_options,
)

__all__ = ["FAMILIES", "FAMILY_DESCRIPTIONS", "MethodInfo", "capability_matrix", "check_supported", "get_method", "list_methods", "register_method", "validate_options"]
