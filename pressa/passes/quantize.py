"""INT8 and weight-only quantization of any ONNX model.

- dynamic: int8 weights, activations quantized at run time (ONNX Runtime's quantizer as the engine).
- static: QDQ int8 with calibrated activation ranges (min-max, entropy, percentile), per-channel
  weights, on MatMul/Gemm inputs only (outputs and other consumers stay float). SmoothQuant first
  moves activation outliers into the weights; activations are int8 without zero point where the
  tensor is two-sided and uint8 with one where it is one-sided (the form OpenVINO's INT8 kernels
  run; pressa.quant.smooth). With `max_drop`, the nodes whose quantization hurts agreement with the original most are
  kept in float, most harmful first, until the drop holds (calibrated once, re-quantized per try).
- weight-only: MatMul weights to MatMulNBits (int4/int8 per group), pressa's RTN and packing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pressa.passes.base import BadConfig, IgnoredScope, Pass, PassConfig, PassContext, olive
from pressa.tempdirs import temp_dir

QTYPES = {"int8": "QInt8", "uint8": "QUInt8"}
OLIVE_SCOPE = olive(scope={"nodes_to_exclude": "names", "op_types_to_exclude": "types"})


class DynamicConfig(PassConfig):
    olive_ignored = ("quant_mode",)
    per_channel: bool = Field(True, description="one scale per output channel of each weight (all-MiniLM-L6-v2: "
                                                "cosine 0.994 vs 0.952 per tensor, same speed)")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="weight integer type")
    op_types: list[str] = Field(default_factory=lambda: ["MatMul", "Gemm", "Attention"],
                                description="op types to quantize", json_schema_extra=olive("op_types_to_quantize"))
    ignored_scope: IgnoredScope = Field(default_factory=IgnoredScope, description="nodes kept in float",
                                        json_schema_extra=OLIVE_SCOPE)


class StaticConfig(PassConfig):
    olive_ignored = ("quant_mode",)
    calibration_data: str | None = Field(None, description="text file, image folder, .npy or .npz",
                                         json_schema_extra=olive("data_config"))
    samples: int = Field(300, ge=1, description="calibration samples",
                         json_schema_extra=olive("calibration_sampling_size"))
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="activation range method",
                                                               json_schema_extra=olive("calibrate_method"))
    percentile: float = Field(99.999, gt=0, le=100, description="for method=percentile")
    per_channel: bool = Field(True, description="one scale per output channel of each weight")
    activation_type: Literal["mixed", "uint8", "int8"] = Field(
        "mixed", description="activation integers: mixed = int8 (zero point 0) for two-sided tensors and uint8 "
                             "with a zero point for one-sided ones (after GELU, Softmax), what OpenVINO's INT8 "
                             "kernels run; uint8 = ONNX Runtime's fastest on x86; int8 = symmetric everywhere")
    smooth_quant: float = Field(0.8, ge=0, le=1, description="SmoothQuant strength alpha, 0 = off: per-channel "
                                "scales move activation outliers into the weights (all-MiniLM-L6-v2 cosine 0.996 "
                                "at 0.8, 0.991 off)")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="weight integer type")
    op_types: list[str] = Field(default_factory=lambda: ["MatMul", "Gemm"], description="op types to quantize",
                                json_schema_extra=olive("op_types_to_quantize"))
    ignored_scope: IgnoredScope = Field(default_factory=IgnoredScope, description="nodes kept in float",
                                        json_schema_extra=OLIVE_SCOPE)
    max_drop: float | None = Field(None, ge=0, le=1, description="largest accepted drop of agreement with the "
                                                                 "original (1 - cosine or 1 - top-1)")
    validation_samples: int = Field(64, ge=1, description="samples for the max_drop check")
    fallback: Literal["dynamic", "float"] = Field("float", description="what max_drop does with the nodes it "
                                                  "takes out of static quantization: float, or dynamic int8 "
                                                  "(per-batch activation ranges: ONNX Runtime only, and no help "
                                                  "where one channel's outliers set the range)")
    max_length: int = Field(128, ge=2, description="tokens per text sample")


class WeightOnlyConfig(PassConfig):
    bits: Literal[4, 8] = Field(4, description="weight bits")
    group_size: Literal[16, 32, 64, 128, 256] = Field(32, description="weights per scale along the input axis",
                                                      json_schema_extra=olive("block_size"))
    symmetric: bool = Field(False, description="no zero points", json_schema_extra=olive("is_symmetric"))
    accuracy_level: int = Field(4, ge=0, le=4, description="MatMulNBits compute: 4 = int8 activations on CPU")
    scale_search: bool = Field(True, description="per-group least-squares choice of scale / zero point")
    ignored_scope: IgnoredScope = Field(default_factory=IgnoredScope, description="nodes kept in float",
                                        json_schema_extra=olive(scope={"nodes_to_exclude": "names"}))


def _quant_types():
    from onnxruntime.quantization import QuantType

    return QuantType


class DynamicQuantization(Pass):
    name = "quantize-dynamic"
    aliases = ("OnnxDynamicQuantization", "DynamicQuantization")
    summary = "int8 weights, activations quantized at run time"
    Config = DynamicConfig

    def run(self, model_path: Path, config: DynamicConfig, out_dir: Path, ctx: PassContext) -> dict:
        from onnxruntime.quantization import quantize_dynamic

        from pressa.graph.onnx_io import load_model, save_model

        model = load_model(model_path)
        exclude = config.ignored_scope.resolve(model)
        with temp_dir("quantize-") as tmp:
            out = Path(tmp) / "model.onnx"
            wtype = getattr(_quant_types(), QTYPES[config.weight_type])
            quantize_dynamic(str(model_path), str(out), op_types_to_quantize=config.op_types,
                             per_channel=config.per_channel, weight_type=wtype,
                             nodes_to_exclude=exclude, use_external_data_format=True,
                             extra_options={"MatMulConstBOnly": True})
            q = load_model(out)
        save_model(q, out_dir)
        return {"excluded": exclude, "quantized_ops": _count(q, ("MatMulInteger", "DynamicQuantizeMatMul",
                                                                  "QAttention", "ConvInteger"))}


class StaticQuantization(Pass):
    name = "quantize-static"
    aliases = ("OnnxStaticQuantization", "OnnxQuantization", "StaticQuantization", "QuantizationAwareCalibration")
    summary = "QDQ int8 with calibrated activation ranges; optional accuracy-drop limit"
    Config = StaticConfig

    def run(self, model_path: Path, config: StaticConfig, out_dir: Path, ctx: PassContext) -> dict:
        from pressa.evaluate.outputs import metric_for
        from pressa.graph.onnx_io import load_model, save_model
        from pressa.quant.calib_data import batches

        model = load_model(model_path)
        source = ctx.extra.get("calibration_data", config.calibration_data)
        if source is None:
            raise BadConfig("static quantization needs calibration data (--calibration-data FILE)")
        exclude = config.ignored_scope.resolve(model)

        def calib():
            return batches(source, model, ctx.source_folder, config.samples, 1, config.max_length,
                           same_length=config.method != "minmax")

        with temp_dir("quantize-") as tmp:
            tmp = Path(tmp)
            cache = tmp / "ranges.json"
            src, smoothed = self._smoothed(model, model_path, source, config, exclude, tmp, ctx)
            ctx.progress(0, 1, f"calibrating on {config.samples} samples ({config.method})")
            q_path = self._quantize(src, tmp / "q", config, calib, exclude, cache)
            report = {"excluded": exclude, "smoothed_inputs": smoothed}
            val = list(batches(source, model, ctx.source_folder, config.validation_samples, 8, config.max_length))
            if config.max_drop is not None:
                q_path, search = self._search(model, model_path, src, q_path, val, config, calib, exclude, cache,
                                              tmp, ctx)
                report.update(search)
            else:                           # say how much was lost, and what to do when it is a lot
                report["drop"] = 1.0 - _agreement(q_path, val, [_run(str(model_path), b) for b in val])
                if report["drop"] > 0.01:
                    ctx.log(f"warning: agreement with the original dropped by {report['drop']:.3f}; "
                            "--max-drop 0.01 moves the most harmful nodes to dynamic int8")
            q = load_model(q_path)
        report["metric"] = metric_for(model.graph.output[0].name)
        save_model(q, out_dir)
        report["quantized_ops"] = _count(q, ("QuantizeLinear", "DequantizeLinear"))
        return report

    def _smoothed(self, model, model_path: Path, source, config: StaticConfig, exclude: list[str], tmp: Path,
                  ctx: PassContext) -> tuple[Path, int]:
        """(the float graph to quantize: SmoothQuant's when config.smooth_quant, inputs smoothed)."""
        from pressa.graph.onnx_io import load_model, save_model
        from pressa.quant.calib_data import batches
        from pressa.quant.smooth import smooth

        if not config.smooth_quant:
            return model_path, 0
        ctx.progress(0, 1, f"SmoothQuant (alpha {config.smooth_quant})")
        copy = load_model(model_path)
        n = smooth(copy, batches(source, model, ctx.source_folder, 64, 8, config.max_length), config.smooth_quant,
                   config.op_types, set(exclude))
        if not n:
            return model_path, 0
        (tmp / "smoothed").mkdir()
        return save_model(copy, tmp / "smoothed"), n

    def _quantize(self, model_path: Path, out: Path, config: StaticConfig, calib, exclude: list[str], cache: Path,
                  only: list[str] | None = None) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

        from pressa.quant.calib_data import reader

        out.mkdir(parents=True, exist_ok=True)
        qt = _quant_types()
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[config.method]
        quantize_static(str(model_path), str(out / "model.onnx"),
                        calibration_data_reader=None if cache.is_file() else reader(calib),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=config.op_types,
                        per_channel=config.per_channel,
                        activation_type=getattr(qt, QTYPES.get(config.activation_type, "QUInt8")),
                        weight_type=getattr(qt, QTYPES[config.weight_type]), nodes_to_exclude=exclude,
                        nodes_to_quantize=only, use_external_data_format=True, calibrate_method=method,
                        extra_options={"CalibPercentile": config.percentile, "WeightSymmetric": True,
                                       "ActivationSymmetric": config.activation_type == "int8",
                                       "OpTypesToExcludeOutputQuantization": list(config.op_types),
                                       "DedicatedQDQPair": True},
                        calibration_cache_path=str(cache))
        if config.activation_type == "mixed":
            from pressa.graph.onnx_io import load_model, save_model
            from pressa.quant.smooth import signed_activations_to_int8

            q = load_model(out / "model.onnx")
            signed_activations_to_int8(q)
            save_model(q, out)
        return out / "model.onnx"

    def _search(self, model, model_path, src, q_path, val, config, calib, exclude, cache, tmp, ctx):
        """Keep nodes in float, most harmful first, until agreement drops by at most max_drop (agreement
        with `model_path`'s outputs; `src` is the graph quantized, the same function smoothed)."""
        ref = [_run(str(model_path), b) for b in val]
        drop = 1.0 - _agreement(q_path, val, ref)
        report = {"excluded": list(exclude), "drop_all_quantized": drop, "search": []}
        if drop <= config.max_drop:
            report.update(drop=drop, met=True, fallback_nodes=[])
            return q_path, report
        candidates = [n.name for n in model.graph.node if n.op_type in config.op_types and n.name not in exclude]
        harm = {}
        for i, name in enumerate(candidates):                  # each node quantized alone
            ctx.progress(i, len(candidates) * 2, f"sensitivity {name}")
            p = self._quantize(src, tmp / f"s{i}", config, calib, exclude, cache, only=[name])
            harm[name] = 1.0 - _agreement(p, val, ref)
        ranked = sorted(candidates, key=lambda n: -harm[n])
        kept = list(exclude)
        moved: list[str] = []
        for j, name in enumerate(ranked):
            kept.append(name)
            moved.append(name)
            ctx.progress(len(candidates) + j, len(candidates) * 2, f"{len(moved)} nodes {config.fallback}")
            q_path = self._quantize(src, tmp / f"k{j}", config, calib, kept, cache)
            if config.fallback == "dynamic":
                q_path = _dynamic_nodes(q_path, tmp / f"d{j}", moved)
            drop = 1.0 - _agreement(q_path, val, ref)
            report["search"].append({"node": name, "sensitivity": harm[name], "drop": drop})
            if drop <= config.max_drop:
                break
        report.update(excluded=kept, fallback=config.fallback, fallback_nodes=moved, drop=drop,
                      met=drop <= config.max_drop)
        if drop > config.max_drop:
            ctx.log(f"warning: with every quantizable node out of static quantization the drop is {drop:.4f}")
        return q_path, report


def _dynamic_nodes(q_path: Path, out: Path, nodes: list[str]) -> Path:
    """Dynamic int8 (per-channel weights) for `nodes` of an otherwise statically quantized graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(q_path), str(out / "model.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_quantize=nodes, use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
    from pressa.graph.onnx_io import load_model, save_model

    q = load_model(out / "model.onnx")          # the quantizer types every QDQ tensor uint8 in value_info,
    del q.graph.value_info[:]                    # the int8 ones of mixed activations included: drop the hints
    return save_model(q, out)


def _run(path: str, feeds: dict) -> list[np.ndarray]:
    from pressa.graph.inputs import run_model

    return run_model(path, feeds, threads=0)


def _agreement(q_path: Path, val: list[dict], ref: list[list[np.ndarray]]) -> float:
    import onnxruntime as ort

    from pressa.evaluate.outputs import Agreement

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(q_path), so, providers=["CPUExecutionProvider"])
    acc = Agreement([o.name for o in s.get_outputs()])
    for feeds, r in zip(val, ref):
        acc.add(r, s.run(None, feeds), feeds.get("attention_mask"))
    return acc.score()


def _count(model, ops: tuple[str, ...]) -> int:
    return sum(1 for n in model.graph.node if n.op_type in ops)


class WeightOnlyQuantization(Pass):
    name = "quantize-weight-only"
    aliases = ("OnnxMatMul4Quantizer", "OnnxBlockWiseRtnQuantization", "MatMulNBitsQuantization",
               "WeightOnlyQuantization")
    summary = "MatMul weights to int4/int8 groups (MatMulNBits)"
    Config = WeightOnlyConfig

    def run(self, model_path: Path, config: WeightOnlyConfig, out_dir: Path, ctx: PassContext) -> dict:
        from pressa.graph.onnx_io import load_model, save_model

        model = load_model(model_path)
        exclude = set(config.ignored_scope.resolve(model))
        n = to_matmulnbits(model, config, exclude, ctx.progress)
        save_model(model, out_dir)
        return {"excluded": sorted(exclude), "quantized_ops": n}


def to_matmulnbits(model, config: WeightOnlyConfig, exclude: set[str], progress=lambda *a: None) -> int:
    """Replace each MatMul whose second input is a constant 2-D float weight with MatMulNBits."""
    from onnx import helper, numpy_helper

    from pressa.graph.view import GraphView
    from pressa.quant.packing import matmulnbits_tensors
    from pressa.quant.rtn import quantize_rtn

    v = GraphView(model)
    todo = []
    for node in model.graph.node:
        w = v.const(node.input[1]) if node.op_type == "MatMul" and node.name not in exclude else None
        if w is not None and w.ndim == 2 and w.dtype in (np.float32, np.float16) and node.input[1] in v.inits:
            todo.append((node, w))
    if todo and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for i, (node, w) in enumerate(todo):
        progress(i, len(todo), node.name or node.output[0])
        k, n = w.shape
        qw = quantize_rtn(w.T.astype(np.float32), config.bits, config.group_size, config.symmetric,
                          config.scale_search)
        t = matmulnbits_tensors(qw)
        base = f"{node.name or node.output[0]}/nbits"
        inits = [numpy_helper.from_array(t["B"], f"{base}/B"),
                 numpy_helper.from_array(t["scales"].astype(w.dtype), f"{base}/scales")]
        ins = [node.input[0], f"{base}/B", f"{base}/scales"]
        if "zero_points" in t:
            inits.append(numpy_helper.from_array(t["zero_points"], f"{base}/zero_points"))
            ins.append(f"{base}/zero_points")
        model.graph.initializer.extend(inits)
        new = helper.make_node("MatMulNBits", ins, list(node.output), name=node.name, domain="com.microsoft",
                               K=k, N=n, bits=config.bits, block_size=config.group_size,
                               accuracy_level=config.accuracy_level)
        node.CopyFrom(new)
    GraphView(model).prune()
    return len(todo)
