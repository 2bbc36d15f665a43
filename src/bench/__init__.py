"""`python -m src bench`: side-by-side speed ratios of our paths against naive references,
measured in one run on this machine (rows: loader, preprocess, inference_tta, train_step,
demo_end_to_end). `measure` times, `rows` holds one function per row, `table` writes the
results."""
