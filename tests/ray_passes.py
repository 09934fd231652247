"""A pass for the Ray tests: copies an ONNX model, or (crash=true) ends its process at once, as a worker
that segfaults or is killed would. Registered in Ray's workers by runtime_env's worker_process_setup_hook."""

from __future__ import annotations

import os
from pathlib import Path

from pressa.passes.base import Pass, PassConfig, PassContext


class CrashConfig(PassConfig):
    crash: bool = False
    tag: int = 0                   # a second option, only to make distinct candidates


class CopyOrCrash(Pass):
    name = "copy-or-crash"
    summary = "test only: copy the model, or end the process"
    Config = CrashConfig

    def run(self, model_path: Path, config: CrashConfig, out_dir: Path, ctx: PassContext) -> dict:
        from pressa.graph.onnx_io import load_model, save_model

        if config.crash:
            os._exit(3)
        save_model(load_model(model_path), out_dir)
        return {"tag": config.tag}


def register() -> None:
    """Importing this module registers the pass (Pass.__init_subclass__)."""
