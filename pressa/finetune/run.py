"""One `pressa finetune` run: the trainable model, training, and the adapter folder written atomically with
its pressa.json (data, template, steps, losses) and loss curve."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from pressa.errors import BadArgument
from pressa.evaluate.latency import peak_rss_mb
from pressa.finetune.data import DataOptions
from pressa.finetune.train import LoraOptions, train, trainable_folder


def finetune(model: str | None, data: DataOptions, lora: LoraOptions, output: Path, overwrite: bool = False,
             resume: bool = False, log=lambda s: None, progress=lambda done, total, desc: None) -> dict:
    """Train a LoRA adapter of `model` into `output`; returns its manifest. Raises KeyboardInterrupt after
    writing the adapter trained so far when Ctrl-C stopped the run."""
    from pressa.artifact import ArtifactKind, Manifest, atomic_folder, write_manifest
    from pressa.finetune.plot import loss_png

    output = Path(output)
    if resume and not output.is_dir():
        raise BadArgument(f"--resume: {output} does not exist; run without --resume first")
    with atomic_folder(output, overwrite or resume, option="--output_path") as tmp:
        with tempfile.TemporaryDirectory() as work:
            folder = trainable_folder(model, Path(work) / "hf")
            run = train(folder, data, lora, tmp, progress, resume=output if resume else None, log=log)
        cfg_path = tmp / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = model or "SmolLM2-135M-Instruct (bundled)"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        before, after = run.eval_before, run.eval_after
        said = f"eval loss {before:.3f} -> {after:.3f}" if before is not None and after is not None else ""
        loss_png(run.losses, tmp / "loss.png", f"LoRA r={lora.lora_r}: {run.step} steps  {said}")
        peak_mb = peak_rss_mb()
        manifest = write_manifest(tmp, Manifest(
            kind=ArtifactKind.LORA_ADAPTER, source={"model": model or "bundled"},
            passes=[{"pass": "finetune", "config": {**asdict(lora), **asdict(data)}}],
            finetune={"steps": run.step, "losses": run.losses, "eval_loss_before": before, "eval_loss_after": after,
                      "seconds": round(run.seconds, 2), "steps_per_s": round(run.step / run.seconds, 3)
                      if run.seconds else None, "peak_rss_mb": round(peak_mb), "interrupted": run.interrupted}))
    if run.interrupted:
        log(f"stopped at step {run.step}: the adapter trained so far is in {output}; --resume continues it")
        raise KeyboardInterrupt
    log(f"{run.step} steps in {run.seconds:.0f} s ({run.step / max(run.seconds, 1e-9):.2f} steps/s); {said}; "
        f"adapter in {output}")
    return manifest


def merged_folder(model: str | None, adapter: Path, out: Path) -> None:
    """The model with the adapter merged, as a Hugging Face-style folder (config.json, model.safetensors,
    tokenizer files) that auto-opt and the model builder read like any source."""
    from pressa.finetune.merge import merged
    from pressa.finetune.train import write_folder
    from pressa.sources import open_source

    src = open_source(model)
    write_folder(src, merged(src.weights, adapter), out)
