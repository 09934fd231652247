"""The whole-model calibration pressa used before calibrating layer by layer, kept as the reference the
layer-by-layer statistics must reproduce: one float32 graph of the whole model with every linear's input
as an extra output, run over the windows; every layer's statistics held at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pressa.capture.build_options import BuildOptions
from pressa.capture.calibrate import InputStats, accumulate
from pressa.capture.decoder import DecoderBuilder
from pressa.capture.layerwise import BATCH
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
        for start in range(0, len(windows), BATCH):          # the layer-by-layer batches, for the same sums
            ids = np.asarray(windows[start:start + BATCH], np.int64)
            feeds.update({k: np.repeat(empty, len(ids), axis=0) for k in feeds if k.startswith("past")})
            feeds["input_ids"], feeds["attention_mask"] = ids, np.ones(ids.shape, np.int64)
            for name, x in zip(names, sess.run(names, feeds)):
                accumulate(stats, name[len("calib."):], x.reshape(len(ids), ids.shape[1], -1), start,
                           len(windows), seed)
    return stats
