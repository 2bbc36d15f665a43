"""The generic engine: device, distributed setup, checkpoints, train/eval loops, TTA inference.

Nothing here knows about bones: the task (dataset, target codec, metric) is passed in.
"""
