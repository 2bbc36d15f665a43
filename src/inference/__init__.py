"""Inference on new images with trained models: the same preprocessing, TTA views, fold averaging
and stack as the trainer's test predictions, so `python -m src predict` reproduces an
experiment's `test.csv` for the same images.

- `inputs`: which images, and each image's sex (`--sex`, or a CSV);
- `bundle`: which models, read from `working/<dataset>/` or from a packaged folder (`manifest.json`);
- `images`: preprocessing in memory (never into the training cache), registration included;
- `predictor`: TTA predictions per model, averaged over folds, and the stack;
- `package`: the code+weights folder for Kaggle (`python -m src kaggle-package`);
- `kaggle`: what touches Kaggle itself: credentials checks, the lazily imported API, kernel paths.
"""
