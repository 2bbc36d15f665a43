"""boneage-workbench: pediatric bone age assessment from left-hand radiographs.

Data flows one way: raw input -> audit -> folds -> preprocessing cache -> models ->
predictions (OOF/test CSVs keyed by id) -> stacker -> reports.
"""

__version__ = "0.1.0"
