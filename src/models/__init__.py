"""Models: timm backbones with a sex input, and target codecs (regression now, bins later)."""

from .boneage_net import BoneAgeNet, build_model
from .targets import build_target

__all__ = ["BoneAgeNet", "build_model", "build_target"]
