#!/usr/bin/env bash
# The whole pipeline, stage by stage. Every stage skips work whose outputs are complete, so a
# rerun after an interruption resumes where it stopped.
#
#   bash run_all.sh --demo                       # synthetic phantom, 2 CPU cores, a few minutes
#   bash run_all.sh                              # Kaggle data in input/ (GPU profile `full`)
#   bash run_all.sh --input DIR --profile cpu    # any folder in the Kaggle layout, CPU profile
#   bash run_all.sh --input DIR --smoke          # a quick try: 100 images, 1 epoch, own experiment folder
#   bash run_all.sh ... train.epochs=5           # extra key=value overrides go to training
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --demo            generate the phantom under input/phantom (once) and run every stage on it
  --input DIR       dataset root in the Kaggle layout (default: input/, or input/phantom with --demo)
  --profile NAME    config overlay from src/configs/profiles (default: full, or demo with --demo)
  --device DEV      auto | cpu | cuda (default: auto)
  --config NAME     baseline experiment config (default: baseline_inception_v3)
  --smoke           a quick check of the whole path: 100 training images, 1 epoch, in <config>-<profile>-limit100
  --force           retrain every fold from scratch (default: finished folds are skipped, interrupted ones resume)
  --jobs N          train N folds at once, each in its own process with its share of the cores
                    (and its own GPU, CUDA_VISIBLE_DEVICES, where there are GPUs)
                    (default: 2 for the demo and cpu profiles on a machine with 2+ cores, else 1)
  --baseline-only   train the baseline only (default: then the profile's model family, src/configs/families.yaml)
  --test-labels F   score the test predictions against this labels CSV in the leaderboard (repeatable)
  -h, --help        this help
EOF
}

PY=${PYTHON:-python}
DEMO=0
INPUT=""
PROFILE=""
DEVICE=auto
CONFIG=baseline_inception_v3
SMOKE=0
FAMILY=1
LABELS=()
FORCE=()
JOBS=""
EXTRA=()
while (($#)); do
  case "$1" in
    --demo) DEMO=1 ;;
    --input) INPUT=${2:?--input needs a folder}; shift ;;
    --input=*) INPUT=${1#*=} ;;
    --profile) PROFILE=${2:?--profile needs a name}; shift ;;
    --profile=*) PROFILE=${1#*=} ;;
    --device) DEVICE=${2:?--device needs a value}; shift ;;
    --device=*) DEVICE=${1#*=} ;;
    --config) CONFIG=${2:?--config needs a name}; shift ;;
    --config=*) CONFIG=${1#*=} ;;
    --smoke) SMOKE=1 ;;
    --force) FORCE=(--force) ;;
    --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
    --jobs=*) JOBS=${1#*=} ;;
    --baseline-only) FAMILY=0 ;;
    --test-labels) LABELS+=(--test-labels "${2:?--test-labels needs a file}"); shift ;;
    --test-labels=*) LABELS+=(--test-labels "${1#*=}") ;;
    -h|--help) usage; exit 0 ;;
    *=*) EXTRA+=("$1") ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Each stage's wall time, written to $WORK/run_all_timings.json at the end (the bench's
# demo_end_to_end row reads it) and printed.
STAGES=()
STAGE=""
STAGE_T0=$(date +%s.%N)
RUN_T0=$STAGE_T0
end_stage() {
  local now; now=$(date +%s.%N)
  [[ -n "$STAGE" ]] && STAGES+=("$STAGE=$(awk -v a="$STAGE_T0" -v b="$now" 'BEGIN { printf "%.1f", b - a }')")
  STAGE_T0=$now
  STAGE=""
}
stage() {
  end_stage
  STAGE=${1%% *}
  STAGE=${STAGE%:}
  printf '\n==> %s\n' "$*"
}
write_timings() {
  end_stage
  "$PY" -m src.utils.timings --out "$WORK/run_all_timings.json" --started "$RUN_T0" --profile "$PROFILE" \
    --input "$INPUT" --jobs "$JOBS" "${STAGES[@]}"
}

if [[ -n "$PROFILE" && ! -f src/configs/profiles/$PROFILE.yaml ]]; then
  echo "run_all.sh: unknown profile '$PROFILE' (profiles: $(cd src/configs/profiles && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' '))" >&2
  exit 2
fi
if [[ ! -f src/configs/${CONFIG%.yaml}.yaml && ! -f "$CONFIG" ]]; then
  echo "run_all.sh: unknown config '$CONFIG' (configs: $(cd src/configs && ls *.yaml | grep -v defaults | sed 's/\.yaml$//' | tr '\n' ' '))" >&2
  exit 2
fi
if ((SMOKE)); then
  EXTRA=(--limit "${SMOKE_LIMIT:-100}" train.epochs=1 "${EXTRA[@]}")
fi

if ((DEMO)); then
  INPUT=${INPUT:-input/phantom}
  PROFILE=${PROFILE:-demo}
  stage "phantom: synthetic hands in the Kaggle layout -> $INPUT"
  "$PY" -m src phantom --out "$INPUT" --n-train "${PHANTOM_TRAIN:-600}" --n-test "${PHANTOM_TEST:-100}" --scale "${PHANTOM_SCALE:-0.25}"
else
  INPUT=${INPUT:-input}
  PROFILE=${PROFILE:-full}
  if [[ "$INPUT" != input && ! -d "$INPUT" ]]; then
    echo "run_all.sh: the input folder '$INPUT' does not exist" >&2
    exit 1
  fi
  if ! compgen -G "$INPUT/*.csv" >/dev/null; then
    cat >&2 <<EOF
No labels CSV in '$INPUT'. Download the RSNA Bone Age data from Kaggle (an API token in ~/.kaggle/kaggle.json):

    kaggle datasets download kmader/rsna-bone-age -p input --unzip
    bash run_all.sh

or try the whole pipeline on the synthetic phantom, no download needed:

    bash run_all.sh --demo
EOF
    exit 1
  fi
fi

# The cores this process may use. GNU nproc also honours OMP_NUM_THREADS and OMP_THREAD_LIMIT: a
# shell that set OMP_NUM_THREADS=1 for another tool would train 1 fold at a time here, with the
# epochs the speed probe sized for 1 process, and overrun the profile's time budget.
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
if [[ -z "$JOBS" ]]; then
  JOBS=1
  if [[ "$PROFILE" == demo || "$PROFILE" == cpu ]] && (( CORES >= 2 )); then
    JOBS=2   # on CPU, 2 processes of 1 thread train ~1.4x faster than 1 of 2
  fi
fi
if ! [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_all.sh: --jobs needs a whole number >= 1, not '$JOBS'" >&2
  exit 2
fi

DATASET=$("$PY" -c 'import sys; from src.data.layout import dataset_name; print(dataset_name(sys.argv[1]))' "$INPUT")
WORK=$("$PY" -c 'from src.data.layout import working_root; print(working_root())')/$DATASET

stage "audit: every row and image of $INPUT -> $WORK/audit.csv"
"$PY" -m src audit --input "$INPUT" ${AUDIT_FLAGS:-}

stage "folds: stratified sex x age-bin folds -> $WORK/folds.csv"
"$PY" -m src folds --input "$INPUT"

MODELS=""
if ((FAMILY && !SMOKE)); then
  MODELS=$("$PY" -c 'import sys, yaml; print(" ".join(yaml.safe_load(open("src/configs/families.yaml")).get(sys.argv[1]) or []))' "$PROFILE")
fi
CONFIGS=(--config "$CONFIG")
for MODEL in $MODELS; do CONFIGS+=(--config "$MODEL"); done

if [[ -n "$MODELS" ]]; then
  stage "registration: 3 keypoints per image, the canonical frame, QA grids -> $WORK/registration/"
  "$PY" -m src register --input "$INPUT" --qa
fi

stage "train: the baseline $CONFIG${MODELS:+ and the model family: $MODELS}; profile $PROFILE, $JOBS fold(s) at a time on $CORES cores (finished folds are skipped, an interrupted one resumes)"
"$PY" -m src train "${CONFIGS[@]}" --profile "$PROFILE" --input "$INPUT" --device "$DEVICE" --jobs "$JOBS" \
  "${FORCE[@]}" "${EXTRA[@]}"

EXP="$WORK/$CONFIG-$PROFILE"
((SMOKE)) && EXP="$EXP-limit${SMOKE_LIMIT:-100}"

if ((SMOKE)); then
  write_timings
  stage "done (smoke run: the model family, stack and report are skipped)"
  echo "baseline OOF:     $EXP/oof.csv"
  [[ -f "$EXP/summary.txt" ]] && echo "baseline summary: $(cat "$EXP/summary.txt")"
  exit 0
fi

stage "stack: linear stack of every finished model, nested by fold -> $WORK/stack/"
# MAE is the metric: each outer fold picks least squares or least absolute deviations (nnls/lad) by CV on its fitting folds
"$PY" -m src stack --input "$INPUT" --method auto

stage "leaderboard -> $WORK/leaderboard.md"
"$PY" -m src leaderboard --input "$INPUT" "${LABELS[@]}"

stage "report: OOF error by age bucket and sex, plots -> $WORK/report/index.html"
"$PY" -m src report --input "$INPUT"

if [[ -f "$WORK/stack/test.csv" ]]; then
  stage "submission -> submission/submission.csv"
  "$PY" -m src submit --input "$INPUT"
fi

write_timings
stage "done"
echo "audit report:     $WORK/audit.csv"
echo "folds:            $WORK/folds.csv"
echo "baseline summary: $(cat "$EXP/summary.txt")"
echo "leaderboard:      $WORK/leaderboard.md"
echo "report:           $WORK/report/index.html"
[[ -f submission/submission.csv ]] && echo "submission:       submission/submission.csv"
exit 0
