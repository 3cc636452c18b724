#!/usr/bin/env python3
"""Runs mlx-lm's own Python implementation on an mlx-lm checkpoint directory and writes its logits.

Usage: compare_mlx_lm.py CHECKPOINT_DIR TOKENS OUT.safetensors

TOKENS is a comma-separated list of token ids. The whole sequence goes through the model in one call
(no cache, causal mask), on the CPU; OUT gets `logits` [1, T, vocab] as float32. The Rust test
tests/mlx_lm_compare.rs writes the checkpoint with zmlx's synthetic builder, runs this script and
compares the logits with zmlx's models (needs `pip install mlx==0.32.4 mlx-cpu==0.32.4 mlx-lm`).
"""

import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    import mlx.core as mx
    from mlx_lm.utils import load_model

    mx.set_default_device(mx.cpu)
    ckpt, tokens, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    ids = [int(t) for t in tokens.split(",") if t.strip()]
    model, _ = load_model(ckpt)
    logits = model(mx.array(ids, dtype=mx.int32)[None])
    mx.save_safetensors(out, {"logits": logits.astype(mx.float32)})
    print(f"mlx {mx.__version__}: logits {tuple(logits.shape)} {logits.dtype} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
