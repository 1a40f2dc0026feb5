#!/usr/bin/env bash
# Build the teaching model from nothing, on a CPU: data -> tokenizer -> small Llama -> CTC -> E2E -> models/teach/.
#   bash scripts/train_teaching_model.sh            (over 1 hour on 2 cores; each stage's time is printed)
# Every stage is a plain command you can run alone; outputs go to data/synth/ and $RUN (runs/teach/); the shipped
# model to $SHIP_TO (models/teach/) and samples to $SAMPLES_TO (samples/).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then  # the header above is the manual
    sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "$0: takes no arguments (set RUN, SHIP_TO, SAMPLES_TO in the environment; --help)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # 1 thread + 1 data worker: on 2 busy cores, 2 threads each thrash
RUN=${RUN:-runs/teach}
mkdir -p "$RUN"
stage() { local name=$1; shift; local t0=$SECONDS; echo "== $name: $*"; "$@"; echo "== $name took $((SECONDS - t0)) s"; }

stage data python data/prepare_synthetic.py all
stage ood python data/prepare_synthetic.py ood        # the out-of-domain test set (README)
stage degraded python data/prepare_synthetic.py degraded  # -20 dB, +12 dB, 8 kHz and noisy copies of the test set
stage tokenizer python tokenizer.py --text data/synth/text/lm.txt --vocab-size 1024 --out "$RUN/tokenizer"
stage lm python train_lm.py --text data/synth/text/lm.txt --tokenizer "$RUN/tokenizer.model" --out "$RUN/llama" \
    --dim 192 --n-layers 4 --n-heads 4 --n-kv-heads 4 --ffn-dim 512 --seq-len 512 --batch-size 8 --steps 1000 \
    --lr 3e-3 --copy-fraction 0.5  # long blocks and copy exercises: the frozen LM must read a 250-frame prompt
stage ctc python train.py --preset teach --stage ctc --train data/synth/train.jsonl --valid data/synth/valid.jsonl \
    --tokenizer "$RUN/tokenizer.model" --decoder "$RUN/llama" --out "$RUN/ctc"
stage e2e python train.py --preset teach --stage e2e --init "$RUN/ctc/best" --train data/synth/train.jsonl \
    --valid data/synth/valid.jsonl --tokenizer "$RUN/tokenizer.model" --decoder "$RUN/llama" --out "$RUN/e2e" \
    --epochs 2 --lr 1e-3 --stop-at 400  # step 400 of the 750-step schedule
stage ship python scripts/ship_teaching_model.py --model "$RUN/e2e/best" --out "${SHIP_TO:-models/teach}" \
    --samples "${SAMPLES_TO:-samples}"
