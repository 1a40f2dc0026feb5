#!/usr/bin/env bash
# Every GPU figure in one short run: the release's decoding at its dimensions (ours against transformers, bfloat16
# against float32), 16 files batched against one at a time, a training step at the release's size (ours against the
# original's way), and the shipped teaching model decoded on the GPU, in float32 and bfloat16.
#
#   bash bench/gpu_check.sh                        a CUDA machine; logs in ./gpu_out (or $OUT); about 6 minutes
#   DEVICE=cpu STEPS=4 bash bench/gpu_check.sh     checks the script itself on a CPU (small and slow: not figures)
#   STEPS=32 bash bench/gpu_check.sh               fewer decoded tokens per timing (default 128)
#
# Needs requirements.txt and requirements-dev.txt (transformers is the reference). Each step has its own time limit,
# and its output is kept in $OUT/<step>.txt. On a machine without network access, put wheels of what is missing
# (e.g. `pip download --no-deps --only-binary=:all: -d .whl soundfile cffi pycparser` for its Python and platform)
# in .whl/: they are installed into /tmp/site first.
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
# the release's decoding at its dimensions, ours against transformers, and bf16 against fp32
step decode_release 170 python3 bench/bench_decode.py --device "$DEVICE" --parts 1,2 --steps "$STEPS" --repeat 2
# 16 files batched against one at a time, at the mid size with the release's vocabulary and at ours
step decode_batch 150 python3 bench/bench_decode.py --device "$DEVICE" --parts 3 --steps 64 --repeat 2 --batch-model mid
step decode_batch_teach 60 python3 bench/bench_decode.py --device "$DEVICE" --parts 3 --steps 64 --repeat 2
# training steps at the release's size (batch 12 x 15 s, bf16 autocast), ours against the original's way
step train 150 python3 bench/bench_train.py --device "$DEVICE" --steps "$(( STEPS < 5 ? STEPS : 5 ))" $SMALL
# the shipped model on the GPU, float32 and bfloat16
step decode_samples 60 python3 decode.py --device "$DEVICE" samples/sample1.wav samples/sample2.wav samples/sample3.wav
step decode_samples_bf16 60 python3 decode.py --device "$DEVICE" --dtype bfloat16 samples/sample1.wav samples/sample2.wav
