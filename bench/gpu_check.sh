#!/usr/bin/env bash
# The GPU figures issues 3 and 5 ask for, as one short prepared run on a lent device machine (an H100/H200 image with
# PyTorch, transformers, safetensors, sentencepiece and tokenizers, but no soundfile; nothing can be fetched there).
#
# Here, once (soundfile and its two needs travel as wheels, ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl soundfile cffi pycparser
# Then one device call:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Logs go to $OUT (the device tool's folder) or ./gpu_out. About 6 minutes; each step has its own time limit.
#   DEVICE=cpu STEPS=4 bash bench/gpu_check.sh   checks the script itself on a CPU (small and slow, not figures)
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-128}
SMALL=$([ "$DEVICE" = cpu ] && echo --small)  # a CPU check trains bench_train's small model
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output shown and kept in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "### $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
}
{ nvidia-smi 2>/dev/null; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
    > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# issue 3 (1) and (2): the release's decoding at its dimensions, ours against transformers, and bf16 against fp32
step decode_release 170 python3 bench/bench_decode.py --device "$DEVICE" --parts 1,2 --steps "$STEPS" --repeat 2
# issue 3 (3): 16 files batched against one at a time, at the mid size with the release's vocabulary and at ours
step decode_batch 150 python3 bench/bench_decode.py --device "$DEVICE" --parts 3 --steps 64 --repeat 2 --batch-model mid
step decode_batch_teach 60 python3 bench/bench_decode.py --device "$DEVICE" --parts 3 --steps 64 --repeat 2
# issue 5: training steps at the release's size (batch 12 x 15 s, bf16 autocast), ours against the original's way
step train 150 python3 bench/bench_train.py --device "$DEVICE" --steps "$(( STEPS < 5 ? STEPS : 5 ))" $SMALL
# the shipped model on the GPU, float32 and bfloat16
step decode_samples 60 python3 decode.py --device "$DEVICE" samples/sample1.wav samples/sample2.wav samples/sample3.wav
step decode_samples_bf16 60 python3 decode.py --device "$DEVICE" --dtype bfloat16 samples/sample1.wav samples/sample2.wav
