"""The whole-model calibration pressa used before calibrating layer by layer, kept as the reference the
layer-by-layer statistics must reproduce: one float32 graph of the whole model with every linear's input
as an extra output, run over the windows; every layer's statistics held at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pressa.capture.calibrate import InputStats, accumulate
from pressa.capture.decoder import BuildOptions, DecoderBuilder
from pressa.tempdirs import temp_dir


def whole_model_stats(cfg, weights, windows: list[list[int]], seed: int = 0) -> dict[str, InputStats]:
    import onnxruntime as ort

    with temp_dir("calibration-") as d:
        DecoderBuilder(cfg, weights, BuildOptions(precision="fp32", capture_inputs=True)).build(Path(d))
        sess = ort.InferenceSession(str(Path(d) / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs() if o.name.startswith("calib.")]
        empty = np.zeros((1, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
        feeds = {f"past_key_values.{i}.{kv}": empty for i in range(cfg.num_layers) for kv in ("key", "value")}
        stats: dict[str, InputStats] = {}
        for wi, ids in enumerate(windows):
            feeds["input_ids"] = np.asarray([ids], np.int64)
            feeds["attention_mask"] = np.ones((1, len(ids)), np.int64)
            for name, x in zip(names, sess.run(names, feeds)):
                accumulate(stats, name[len("calib."):], x, wi, len(windows), seed)
    return stats
