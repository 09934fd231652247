"""Causal LMs outside the architecture table: the transformers model exported with its KV cache through
torch (dynamo), then pressa's weight-only quantization (MatMulNBits), into a decoder artifact with the
table's I/O (input_ids, attention_mask, past_key_values.N.key/value -> logits, present.N.key/value).

What it costs against a table row: attention is the model's own ops (no GroupQueryAttention), positions
come from the mask, and the cache grows by concatenation (present = past + new), so genai_config says
past_present_share_buffer false and pressa's engine copies each step's new keys into its cache arrays
(decoder_session.ConcatBinding)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

from pressa.artifact.llm_io import ATTENTION_MASK, INPUT_IDS, LOGITS, past, present
from pressa.capture.export import PARITY_ATOL, _torch, export_module
from pressa.errors import BadArgument, first_line


def transformers_knows(model_type: str) -> bool:
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        return False
    return model_type in CONFIG_MAPPING


def load_causal_lm(folder: str):
    torch = _torch()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    except Exception as err:          # transformers' own errors about the folder
        raise BadArgument(f"{folder}: transformers cannot load it as a causal LM ({first_line(err, 200)})") from None
    missing = info.get("missing_keys") or []
    if missing:                       # transformers would start these from random values
        raise BadArgument(f"{folder}: the checkpoint lacks {len(missing)} of the weights its config asks for "
                          f"(first: {sorted(missing)[0]}); is config.json the checkpoint's own?")
    return model.eval()


def with_cache(model, layers: int):
    """The model as forward(input_ids, attention_mask, **past) -> (logits, *present): past by the
    artifact's input names, present flattened as key 0, value 0, key 1, ...; positions counted from the
    mask (left or right padding)."""
    torch = _torch()
    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    positions = "position_ids" in params

    class CausalLMWithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, **kv):
            cache = DynamicCache([(kv[past(i, "key")], kv[past(i, "value")]) for i in range(layers)])
            extra = {}
            if positions:
                pos = attention_mask.cumsum(-1) - 1
                extra["position_ids"] = pos[:, -input_ids.shape[1]:].clamp(min=0)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                             **{cache_arg: cache}, **extra)
            got = _cache_of(out)
            return (out.logits, *[t for layer in got.layers for t in (layer.keys, layer.values)])

    return CausalLMWithCache().eval()


def _cache_of(out):
    """A forward's KV cache (transformers 5 names it `cache`, 4 `past_key_values`)."""
    return getattr(out, "cache", None) or out.past_key_values


def _kv_shape(model) -> tuple[int, int, int]:
    """(layers, kv heads, head size) of the model's cache, read from a probe run."""
    torch = _torch()
    with torch.no_grad():
        out = model(input_ids=torch.ones((1, 2), dtype=torch.long), use_cache=True)
    cache = _cache_of(out)
    k = cache.layers[0].keys
    return len(cache.layers), int(k.shape[1]), int(k.shape[3])


def _example(vocab: int, layers: int, kv: int, head: int, batch: int, new: int, held: int) -> dict:
    torch = _torch()
    g = torch.Generator().manual_seed(batch * 100 + new)
    mask = torch.ones((batch, held + new), dtype=torch.long)
    mask[0, :2] = 0                                     # a left-padded row
    out = {INPUT_IDS: torch.randint(0, vocab, (batch, new), generator=g), ATTENTION_MASK: mask}
    for i in range(layers):
        for kind in ("key", "value"):
            out[past(i, kind)] = torch.randn((batch, kv, held, head), generator=g)
    return out


def export_causal_lm(model, out_dir: Path, log) -> dict:
    """model.onnx (+ data) of the transformers causal LM with its KV cache, checked against torch on
    other shapes; returns its shape facts."""
    import tempfile

    from pressa.capture.export import check_parity
    from pressa.graph.onnx_io import load_model, save_model

    torch = _torch()
    layers, kv, head = _kv_shape(model)
    vocab = int(model.config.vocab_size)
    module = with_cache(model, layers)
    inputs = _example(vocab, layers, kv, head, 2, 3, 4)
    names = [LOGITS] + [present(i, k) for i in range(layers) for k in ("key", "value")]
    dynamic = {INPUT_IDS: {0: "batch", 1: "sequence"}, ATTENTION_MASK: {0: "batch", 1: "total_sequence"},
               **{n: {0: "batch", 2: "past_sequence"} for n in inputs if n.startswith("past_key_values")}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = Path(tmp) / "export.onnx"
        with torch.no_grad():
            export_module(module, inputs, raw, names, dynamic)
        save_model(load_model(raw), out_dir)
    log(f"exported through torch (dynamo) in {time.perf_counter() - t0:.1f} s")
    worst = max(check_parity(module, out_dir / "model.onnx", _example(vocab, layers, kv, head, 3, n, held), names)
                for n, held in ((5, 0), (1, 6)))
    if not worst <= PARITY_ATOL:
        raise BadArgument(f"the exported graph differs from transformers by {worst:.2e}; this model does not "
                          "export cleanly through the general path")
    cfg = model.config
    context = next((int(getattr(cfg, k)) for k in ("max_position_embeddings", "n_positions", "seq_length")
                    if getattr(cfg, k, None)), 2048)
    return {"layers": layers, "kv_heads": kv, "head_size": head, "vocab_size": vocab, "context_length": context,
            "hidden_size": int(getattr(cfg, "hidden_size", kv * head)),
            "num_heads": int(getattr(cfg, "num_attention_heads", kv)), "parity_max_abs_diff": worst,
            "eos": getattr(cfg, "eos_token_id", None),
            "bos": getattr(cfg, "bos_token_id", None), "pad": getattr(cfg, "pad_token_id", None)}


def quantize_weights(out_dir: Path, precision: str, block_size: int, symmetric: bool, progress=None) -> int:
    """int4/int8: every constant MatMul weight to MatMulNBits (as the weight-only pass does)."""
    if precision == "fp32":
        return 0
    if precision not in ("int4", "int8"):
        raise BadArgument(f"--precision {precision} is not built on the general path yet; use int4, int8 or fp32")
    from pressa.graph.onnx_io import load_model, save_model
    from pressa.passes.quantize import WeightOnlyConfig, to_matmulnbits

    model = load_model(out_dir / "model.onnx")
    cfg = WeightOnlyConfig(bits=4 if precision == "int4" else 8, group_size=block_size, symmetric=symmetric)
    n = to_matmulnbits(model, cfg, set(), progress or (lambda *a: None))
    for f in out_dir.glob("model.onnx*"):
        f.unlink()
    save_model(model, out_dir)
    return n


def _genai(facts: dict, provider: str) -> dict:
    from types import SimpleNamespace

    from pressa.artifact.llm_io import genai_config
    from pressa.capture.config import token_ids

    cfg = SimpleNamespace(eos_token_id=token_ids(facts["eos"]), pad_token_id=facts["pad"], bos_token_id=facts["bos"],
                          head_dim=facts["head_size"], hidden_size=facts["hidden_size"], num_heads=facts["num_heads"],
                          num_layers=facts["layers"], num_kv_heads=facts["kv_heads"], vocab_size=facts["vocab_size"],
                          arch=SimpleNamespace(genai_type="decoder"))
    out = genai_config(cfg, facts["context_length"], provider)
    out["search"]["past_present_share_buffer"] = False          # the cache grows by concatenation
    return out


def build_general_into(src, out_dir: Path, opts, provider: str, reason: str, log, progress=None) -> dict:
    """The artifact of a causal LM outside the table into `out_dir`; returns what the manifest records."""
    from pressa.artifact import write_json
    from pressa.artifact.llm_io import GENAI_CONFIG
    from pressa.graph.onnx_io import load_model, op_counts

    if opts.algorithm != "rtn" or opts.adapter_path:
        raise BadArgument(f"{'--adapter_path' if opts.adapter_path else '--algorithm ' + opts.algorithm} is not "
                          "built on the general path yet")
    model_type = str(src.config.get("model_type", ""))
    if not transformers_knows(model_type):
        raise BadArgument(f"{reason}; transformers does not know it either, so the general path cannot export it")
    model = load_causal_lm(src.location)
    log(f"{model_type!r} is not in pressa's architecture table: taking the general path (the transformers model "
        f"exported through torch, then weight-only {opts.precision}; no fused attention, the cache copied each "
        "step: see README 'Models outside the table')")
    facts = export_causal_lm(model, out_dir, log)
    quantized = quantize_weights(out_dir, opts.precision, opts.block_size, opts.symmetric, progress)
    for name, data in src.tokenizer_files.items():
        (out_dir / name).write_bytes(data)
    write_json(out_dir / "config.json", src.config)
    write_json(out_dir / GENAI_CONFIG, _genai(facts, provider))
    ops = op_counts(load_model(out_dir / "model.onnx", load_data=False))
    return {"general": {"reason": reason, "parity_max_abs_diff": facts["parity_max_abs_diff"],
                        "quantized_matmuls": quantized},
            "graph": {"op_counts": ops, "context_length": facts["context_length"], "logits": "all"}}
