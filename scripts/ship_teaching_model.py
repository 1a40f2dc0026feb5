"""
Package a trained model folder as the repo's teaching model, and copy a few held-out samples beside it.

    python scripts/ship_teaching_model.py --model runs/teach/e2e/best --out models/teach

The shipped folder is self-contained (config.json, model.safetensors in float16, the tokenizer, decoder/ with the
frozen Llama), so `python decode.py samples/sample1.wav` needs nothing else. Samples come from the test split: voices
and sentences training never saw. Their reference texts go to samples/samples.tsv (file<TAB>text); one ~60 s file shows long audio.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
from model import load_model, save_model, tokenizer_path  # noqa: E402


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained model folder (e.g. runs/teach/e2e/best)")
    p.add_argument("--out", default="models/teach", help="where the shipped model goes (default: %(default)s)")
    p.add_argument("--test", default="data/synth/test.jsonl", help="held-out manifest to take samples from")
    p.add_argument("--test-long", default="data/synth/test_long.jsonl", help="long-form manifest: its first file "
                   "is copied as samples/long1.wav")
    p.add_argument("--samples", default="samples", help="folder for the sample wavs (default: %(default)s)")
    p.add_argument("--n-samples", type=int, default=3, help="samples to copy (default: %(default)s)")
    p.add_argument("--window", type=float, default=8.0,
                   help="decode.py's default window for long files with this model: it was trained on clips of "
                        "at most 10 s, so windows near that length decode best (default: %(default)s)")
    p.add_argument("--overlap", type=float, default=3.0, help="overlap of those windows (default: %(default)s)")
    args = p.parse_args(argv)

    src = Path(args.model)
    config = json.loads((src / "config.json").read_text())
    model = load_model(src)
    save_model(model, args.out, tokenizer=tokenizer_path(src), decoder=(src / config["decoder"]).resolve(),
               copy_decoder=True, dtype=torch.float16,  # half the bytes; loaded back as float32
               extra_config={**{k: config[k] for k in ("stage", "step") if k in config},
                             "decode": dict(window=args.window, overlap=args.overlap)})
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"{args.out}: {size / 1e6:.1f} MB")

    test = Path(args.test)
    rows = [json.loads(l) for l in test.read_text(encoding="utf-8").splitlines() if l.strip()]
    rows = [r for r in rows if 3.0 <= r["duration"] <= 8.0][: args.n_samples]  # whole sentences, not labels
    out = Path(args.samples)
    out.mkdir(exist_ok=True)
    lines = []
    for i, r in enumerate(rows, 1):
        shutil.copy(test.parent / r["audio_filepath"], out / f"sample{i}.wav")
        lines.append(f"sample{i}.wav\t{r['text']}\n")
    long = Path(args.test_long)
    if long.is_file():  # one ~60 s file: long audio is transcribed whole, in windows
        r = json.loads(long.read_text(encoding="utf-8").splitlines()[0])
        shutil.copy(long.parent / r["audio_filepath"], out / "long1.wav")
        lines.append(f"long1.wav\t{r['text']}\n")
    (out / "samples.tsv").write_text("".join(lines), encoding="utf-8")
    print(f"{out}: {len(rows)} samples, references in {out / 'samples.tsv'}")


if __name__ == "__main__":
    main()
