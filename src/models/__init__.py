"""Models: timm backbones or the paper's m46 with a sex input, and target codecs (regression,
240-bin classification)."""

from .boneage_net import PROJECT_BACKBONES, BoneAgeNet, build_model, create_backbone
from .m46 import M46
from .targets import TARGETS, ClassificationTarget, RegressionTarget, build_target

__all__ = ["BoneAgeNet", "build_model", "create_backbone", "PROJECT_BACKBONES", "M46", "build_target", "TARGETS",
           "RegressionTarget", "ClassificationTarget"]
