"""Backbones from any source: builtins (CIFAR ResNets), timm names, transformers vision models, custom factories
(docs/backbones.md).

Attributes are loaded lazily: `medpeft_cli.models.sources` parses backbone strings without importing torch.
"""

__all__ = ["Backbone", "create_backbone", "detect_family", "shape_backbone"]


def __getattr__(name: str):
    if name in __all__:
        from medpeft_cli.models import backbones

        return getattr(backbones, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
