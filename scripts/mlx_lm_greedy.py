#!/usr/bin/env python3
"""Writes small checkpoints with mlx-lm's own model classes and greedy-decodes them with mlx-lm.

Usage: mlx_lm_greedy.py OUT_DIR STEPS CASE...

Each CASE is FAMILY:MODE, FAMILY one of qwen3_moe, gpt_oss, mixtral, glm4_moe and MODE affine (4-bit,
groups of 64) or mxfp4 (unquantized bfloat16 experts would need `gather_mm` in bfloat16, which MLX's CPU
backend does not have). For each case the script builds the model from
mlx-lm's `Model` / `ModelArgs` of that family with seeded random weights, casts it to bfloat16 as
`mlx_lm.convert` does (respecting the model's `cast_predicate`), quantizes it with
`mlx_lm.utils.quantize_model` (`nn.quantize` with the model's `quant_predicate`), writes it with
`save_model` / `save_config` to OUT_DIR/FAMILY-MODE (mlx-lm's key names and `quantization` block), loads it
back with `mlx_lm.utils.load_model` and greedy-decodes STEPS tokens after a fixed prompt with
`mlx_lm.generate.generate_step`, on the CPU. OUT_DIR/tokens.json maps each case to its prompt and tokens.

tests/mlx_lm_tokens.rs runs it and checks that zmlx's reference path, loading the same checkpoints,
greedy-decodes the same tokens (needs `pip install mlx==0.32.4 mlx-cpu==0.32.4 mlx-lm`).
"""

import importlib
import json
import random
import sys
from pathlib import Path

# Small dims that still take every path: expert rows sorted in the prefill (19 prompt tokens x top-4 >=
# 64 rows), more decode steps than gpt-oss's window, groups of 32 for mxfp4 and 64 for affine.
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 128, 3, 4, 2, 32
EXPERTS, TOP_K, EXPERT_DIM, VOCAB = 8, 4, 64, 512
PROMPT_LEN = 20

CONFIGS = {
    "qwen3_moe": {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": 4 * EXPERT_DIM,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_experts": EXPERTS,
        "num_experts_per_tok": TOP_K,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "moe_intermediate_size": EXPERT_DIM,
        "rms_norm_eps": 1e-6,
        "vocab_size": VOCAB,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "norm_topk_prob": True,
    },
    "gpt_oss": {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": EXPERT_DIM,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_local_experts": EXPERTS,
        "num_experts_per_tok": TOP_K,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "rope_theta": 150000,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 4096,
            "truncate": False,
        },
    },
    "mixtral": {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": EXPERT_DIM,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_local_experts": EXPERTS,
        "num_experts_per_tok": TOP_K,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "glm4_moe": {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": 4 * EXPERT_DIM,
        "max_position_embeddings": 4096,
        "moe_intermediate_size": EXPERT_DIM,
        "norm_topk_prob": True,
        "num_attention_heads": HEADS,
        "n_group": 4,
        "head_dim": HEAD_DIM,
        "topk_group": 2,
        "n_shared_experts": 1,
        "n_routed_experts": EXPERTS,
        "routed_scaling_factor": 2.5,
        "num_experts_per_tok": TOP_K,
        "first_k_dense_replace": 1,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "use_qk_norm": True,
        "tie_word_embeddings": False,
        "attention_bias": True,
        "partial_rotary_factor": 0.5,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
    },
}


def init_weights(model, seed):
    """Seeded random values for every parameter, scaled so that the logits spread over many tokens."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    mx.random.seed(seed)
    res = (2 * LAYERS) ** -0.5
    new = []
    for name, p in tree_flatten(model.parameters()):
        shape = p.shape
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            v = 1.0 + 0.1 * mx.random.normal(shape)
        elif name.endswith("sinks"):
            v = mx.random.normal(shape)
        elif name.endswith("e_score_correction_bias") or name.endswith(".bias"):
            v = 0.1 * mx.random.normal(shape)
        elif name == "model.embed_tokens.weight":
            v = mx.random.normal(shape)
        else:
            std = shape[-1] ** -0.5
            if "o_proj" in name or "down_proj" in name:
                std *= res
            elif name.endswith("gate.weight") or name.endswith("router.weight"):
                std *= 2.0
            elif name == "lm_head.weight":
                std *= 3.0
            v = std * mx.random.normal(shape)
        new.append((name, v.astype(p.dtype)))
    model.update(tree_unflatten(new))


def write_checkpoint(family, mode, path, seed):
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import quantize_model, save_config, save_model

    config = dict(CONFIGS[family], model_type=family, torch_dtype="bfloat16")
    arch = importlib.import_module(f"mlx_lm.models.{family}")
    model = arch.Model(arch.ModelArgs.from_dict(config))
    init_weights(model, seed)

    # As mlx_lm.convert casts to the checkpoint's dtype.
    cast = getattr(model, "cast_predicate", lambda _: True)

    def set_dtype(k, v):
        if cast(k) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(mx.bfloat16)
        return v

    model.update(tree_map_with_path(set_dtype, model.parameters()))
    model, config = quantize_model(model, config, None, None, mode=mode)
    save_model(path, model)
    save_config(config, config_path=path / "config.json")


def greedy(path, prompt, steps):
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    model, _ = load_model(path)
    tokens = []
    for tok, _ in generate_step(mx.array(prompt, dtype=mx.uint32), model, max_tokens=steps):
        tokens.append(int(tok))
    return tokens


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    import contextlib
    import io

    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    out, steps, cases = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    rng = random.Random(5)
    prompt = [rng.randrange(VOCAB) for _ in range(PROMPT_LEN)]
    result = {}
    for i, case in enumerate(cases):
        family, mode = case.split(":")
        if family not in CONFIGS or mode not in ("affine", "mxfp4"):
            print(f"unknown case {case}", file=sys.stderr)
            return 2
        path = out / f"{family}-{mode}"
        # quantize_model prints its bits per weight.
        with contextlib.redirect_stdout(io.StringIO()):
            write_checkpoint(family, mode, path, seed=100 + i)
        result[case] = {
            "dir": str(path),
            "prompt": prompt,
            "tokens": greedy(path, prompt, steps),
        }
    (out / "tokens.json").write_text(json.dumps(result))
    print(f"mlx {mx.__version__}: {len(cases)} cases, {steps} tokens each -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
