"""The OOF report (`python -m src report`): error by age bucket and sex for every model and the
stack, a few diagnostic plots, and one offline HTML page under `working/<dataset>/report/`.

It reads only what `train`, `stack` and `leaderboard` wrote, through `src.ensemble` (which decides
which experiments can be combined and whether the saved stack is current), so the report never
disagrees with the leaderboard about which rows a model predicts.

Defaults live here so the CLI can show them without importing pandas or matplotlib."""

DEFAULT_BUCKETS = "0,2,5,8,11,14,17,20"  # edges in years
DEFAULT_WORST = 12  # thumbnails in the worst-cases grid
REPORT_DIR = "report"  # under working/<dataset>/
