"""Neural-network building blocks (torch and transformers only)."""

from ._backbone import TransAnnoBackbone, TransAnnoConfig

__all__ = ["TransAnnoBackbone", "TransAnnoConfig"]
