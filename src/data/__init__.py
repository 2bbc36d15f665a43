"""Data: the Kaggle layout, intake and audit, folds, the phantom, the preprocessing cache."""
