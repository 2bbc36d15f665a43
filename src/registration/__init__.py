"""Registration, the paper's preprocessing stage: hand mask, three keypoints, the affine map to
the canonical 1600 x 2080 frame, and the regional crops A/B/C. It runs before the cache."""
