"""Transformer graph optimization: pressa's attention fusion, then ONNX Runtime's transformer fusions
(LayerNorm, SkipLayerNorm, GELU, bias folding) and its basic cleanups. Each stage is checked against
the graph before it on made-up inputs; a stage that changes the outputs is dropped and reported."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pressa.artifact import read_json
from pressa.passes.base import Pass, PassConfig, PassContext
from pressa.tempdirs import temp_dir

TOLERANCE = 1e-4
# ORT's fusion families by model type; anything else is optimized as a BERT-like encoder
ORT_MODEL_TYPES = {"bert", "bart", "gpt2", "t5", "vit", "clip", "conformer", "swin", "phi", "unet", "vae",
                   "gpt_neox", "sam2", "mmdit"}


class OptimizeConfig(PassConfig):
    model_type: str | None = Field(None, description="model family for ONNX Runtime's fusions (bert, gpt2, vit, "
                                                     "...); default: config.json's model_type")
    num_heads: int | None = Field(None, description="attention heads, when the graph does not show them")
    hidden_size: int | None = Field(None, description="hidden size, when the graph does not show it")
    fuse_attention: bool = Field(True, description="fuse self-attention into MultiHeadAttention")
    ort_fusions: bool = Field(True, description="ONNX Runtime's LayerNorm / SkipLayerNorm / GELU / bias fusions")
    check: bool = Field(True, description="check each stage against the graph before it (made-up inputs)")


class TransformerOptimization(Pass):
    name = "optimize"
    aliases = ("OrtTransformersOptimization", "TransformerOptimization", "OnnxPeepholeOptimizer",
               "GraphOptimization")
    summary = "attention, LayerNorm, GELU, SkipLayerNorm and bias fusions; cleanups"
    Config = OptimizeConfig

    def run(self, model_path: Path, config: OptimizeConfig, out_dir: Path, ctx: PassContext) -> dict:
        from pressa.graph.attention import fuse_attention
        from pressa.graph.inputs import max_difference, run_model, sample_inputs
        from pressa.graph.onnx_io import load_model, op_counts, save_model

        hf = _hf_config(ctx.source_folder)
        model = load_model(model_path)
        fused = {"GroupQueryAttention", "MatMulNBits"} & {n.op_type for n in model.graph.node}
        if fused:
            from pressa.passes.base import NotApplicable

            raise NotApplicable(f"the graph is already built with fused LLM operators ({', '.join(sorted(fused))}); "
                                "transformer fusions have nothing to add")
        feeds = sample_inputs(model)
        mask = next((a for k, a in feeds.items() if "mask" in k.lower() and a.ndim == 2), None)
        ref = run_model(model, feeds) if config.check else None
        fusions: dict[str, int] = {}
        skipped: list[str] = []

        def accept(candidate, stage: str) -> bool:
            if ref is None:
                return True
            diff = max_difference(ref, run_model(candidate, feeds), mask)
            if diff <= TOLERANCE:
                return True
            skipped.append(f"{stage}: outputs differ by {diff:.1e}, not applied")
            ctx.log(f"warning: {skipped[-1]}")
            return False

        heads = config.num_heads or hf.get("num_attention_heads")
        ctx.progress(0, 3, "attention")
        if config.fuse_attention:
            import copy

            trial = copy.deepcopy(model)
            n = fuse_attention(trial, heads)
            if n and accept(trial, "attention fusion"):
                model, fusions["MultiHeadAttention"] = trial, n
        ctx.progress(1, 3, "ONNX Runtime fusions")
        if config.ort_fusions:
            fused, stats = _ort_fusions(model, config.model_type or hf.get("model_type"), heads,
                                        config.hidden_size or hf.get("hidden_size"))
            if fused is not None and accept(fused, "ONNX Runtime fusions"):
                model = fused
                fusions.update({k: v for k, v in stats.items() if v})
        ctx.progress(2, 3, "saving")
        save_model(model, out_dir)
        ctx.progress(3, 3, "done")
        return {"fusions": fusions, "skipped": skipped, "op_counts": op_counts(model),
                "num_heads": heads, "model_type": hf.get("model_type")}


def _hf_config(folder: Path) -> dict:
    f = Path(folder) / "config.json"
    try:
        return read_json(f) if f.is_file() else {}
    except (OSError, ValueError):
        return {}


def _ort_fusions(model, model_type: str | None, heads: int | None, hidden: int | None):
    """ONNX Runtime's python fusions (attention off: ours runs first), on a copy saved to disk."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from pressa.graph.onnx_io import load_model

    kind = model_type if model_type in ORT_MODEL_TYPES else "bert"
    opts = FusionOptions(kind)
    opts.enable_attention = False
    with temp_dir("optimize-") as tmp:
        import copy

        from pressa.graph.onnx_io import save_model

        src = save_model(copy.deepcopy(model), Path(tmp))
        try:
            om = optimize_model(str(src), model_type=kind, num_heads=heads or 0, hidden_size=hidden or 0,
                                optimization_options=opts, opt_level=0, use_gpu=False)
        except Exception:            # a pattern ORT's fusions cannot handle: keep the graph as it is
            return None, {}
        stats = om.get_fused_operator_statistics()
        out = Path(tmp) / "fused"
        out.mkdir()
        om.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
        return load_model(out / "model.onnx"), stats
