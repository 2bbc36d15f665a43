"""Synthetic hand phantom: procedurally drawn left-hand radiographs with known bone age.

The project's embedded data set (demo and tests) and the ground truth for registration
(keypoints, hand masks). Modules: growth (who and how mature), shapes + anatomy (the hand in
millimetres), scene (one image's plan), render (pixels), generate (the data set), preview.
"""

from .generate import FIRST_ID, GENERATOR_VERSION, GenerateResult, PhantomParams, generate, is_complete
from .growth import Subject, make_subject, sample_subject
from .render import render
from .scene import KEYPOINTS, Scene, plan_scene

__all__ = ["FIRST_ID", "GENERATOR_VERSION", "KEYPOINTS", "GenerateResult", "PhantomParams", "Scene", "Subject",
           "generate", "is_complete", "make_subject", "plan_scene", "render", "sample_subject"]
