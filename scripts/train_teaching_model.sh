#!/usr/bin/env bash
# Build the teaching model from nothing, on a CPU: data -> tokenizer -> small Llama | CTC -> E2E -> models/teach/.
#   bash scripts/train_teaching_model.sh            (about 2 h 20 min on 2 cores: 2 h 17 min, stage by stage; each stage's time is printed)
# The small Llama's three stages and the CTC stage run side by side, one core each: the CTC stage trains the encoder and its CTC
# head alone and reads only the decoder's width (of the shipped decoder, the same 192); the E2E stage takes the new one.
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
for done in ctc e2e e2e-more e2e-more2; do  # training refuses to start afresh over a run: say so before the data stage, not after
    if [[ -e $RUN/$done || -L $RUN/$done ]]; then
        echo "$0: $RUN/$done holds an earlier build; remove it, or set RUN to another folder" >&2
        exit 2
    fi
done
mkdir -p "$RUN"
stage() { local name=$1; shift; local t0=$SECONDS; echo "== $name: $*"; "$@"; echo "== $name took $((SECONDS - t0)) s"; }

stage data python data/prepare_synthetic.py all
stage ood python data/prepare_synthetic.py ood        # the out-of-domain test set (README)
stage degraded python data/prepare_synthetic.py degraded  # -20 dB, +12 dB, 8 kHz and noisy copies of the test set
stage tokenizer python tokenizer.py --text data/synth/text/lm.txt --vocab-size 1024 --out "$RUN/tokenizer"
# The LM (in the background, log in $RUN/lm.log), in three stages, each continuing the last (--init): 512-token
# blocks, half of them copy exercises whose silences grow over the first 40 % of the steps (the frozen LM must copy
# from a 250-frame prompt); then copy practice (7 of 8 blocks copy exercises); then copying from blurred prompts
# (--copy-noise: embeddings near the right rows, as a projector writes them, not on them).
lm() {
    local common=(--text data/synth/text/lm.txt --tokenizer "$RUN/tokenizer.model")
    stage lm python train_lm.py "${common[@]}" --out "$RUN/llama_base" --dim 192 --n-layers 4 --n-heads 4 \
        --n-kv-heads 4 --ffn-dim 512 --seq-len 512 --batch-size 8 --steps 1500 --lr 3e-3 --copy-fraction 0.5 \
        --silence-ramp 0.4
    stage lm-copy python train_lm.py "${common[@]}" --init "$RUN/llama_base" --out "$RUN/llama_copy" --steps 1000 \
        --lr 2e-3 --warmup 50 --copy-fraction 0.875 --silence-ramp 0
    stage lm-blur python train_lm.py "${common[@]}" --init "$RUN/llama_copy" --out "$RUN/llama" --steps 600 \
        --lr 1e-3 --warmup 50 --copy-fraction 0.5 --silence-ramp 0 --copy-noise 2.0 --eval-every 150
}
lm > "$RUN/lm.log" 2>&1 &
lm=$!
trap 'pkill -P "$lm" 2>/dev/null; kill "$lm" 2>/dev/null; true' EXIT  # a failed ctc stage ends the LM stages too
# the encoder and its CTC head: 8 epochs (3000 steps of 32, the teach preset's ctc stage) on augmented audio
stage ctc python train.py --preset teach --stage ctc --train data/synth/train.jsonl --valid data/synth/valid.jsonl \
    --tokenizer "$RUN/tokenizer.model" --decoder models/teach/decoder --out "$RUN/ctc"
wait $lm || { echo "the lm stages failed: $RUN/lm.log" >&2; exit 1; }
tr "\r" "\n" < "$RUN/lm.log" | grep "^== \|^step \|^done"  # their times and validation lines
# the projector fit, then 4 epochs (1500 steps of 32) of 0.7 CE + 0.3 CTC + 0.3 row-CTC through the frozen LM (the
# teach preset)
stage e2e python train.py --preset teach --stage e2e --init "$RUN/ctc/best" --train data/synth/train.jsonl \
    --valid data/synth/valid.jsonl --tokenizer "$RUN/tokenizer.model" --decoder "$RUN/llama" --out "$RUN/e2e"
# 600 more steps from there, a fresh schedule at half the rate (the listen gap was still rising), half the clips
# with up to 0.5 s of silence before and after (a long file's windows start at pauses: without it, the model
# wrote a token or two on a lead-in of silence); then the same 600 again from that (valid gap 4.11 -> 4.28 nats; the
# test clips' every decoding gained)
more() {  # more NAME FROM: 600 more E2E steps from $RUN/FROM/best into $RUN/NAME
    stage "$1" python train.py --preset teach --stage e2e --init "$RUN/$2/best" --no-projector-fit --lr 5e-4 \
        --max-steps 600 --aug-silence 0.5 --train data/synth/train.jsonl --valid data/synth/valid.jsonl \
        --tokenizer "$RUN/tokenizer.model" --decoder "$RUN/llama" --out "$RUN/$1"
}
more e2e-more e2e
more e2e-more2 e2e-more
stage ship python scripts/ship_teaching_model.py --model "$RUN/e2e-more2/best" --out "${SHIP_TO:-models/teach}" \
    --samples "${SAMPLES_TO:-samples}"
