"""Backbones: timm models with random, hub or local-file weights."""

from medpeft_cli.models.backbones import Backbone, create_backbone, detect_family

__all__ = ["Backbone", "create_backbone", "detect_family"]
