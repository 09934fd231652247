"""`pressa finetune`: a LoRA adapter, with Olive's flags as Olive spells them (the options are the FineTune
pass's: pressa.passes.finetune.FinetuneConfig)."""

from __future__ import annotations

from pathlib import Path

import typer

from pressa import log
from pressa.cli.app import app, print_result
from pressa.cli.options import validated, with_config_options
from pressa.passes.finetune import FinetuneConfig

# Olive spells these flags with underscores
FINETUNE_FLAGS = {f: (f"--{f}",) for f in FinetuneConfig.model_fields}
FINETUNE_FLAGS["batch_size"] = ("--batch_size", "--per_device_train_batch_size")


@app.command("finetune")
@with_config_options(FinetuneConfig, FINETUNE_FLAGS)
def finetune_cmd(
    model: str | None = typer.Option(None, "--model_name_or_path", "-m", help="HF folder, Hub id, .gguf file "
                                     "or bundled name. Default: the bundled SmolLM2-135M-Instruct."),
    output: Path = typer.Option(Path("adapters/lora"), "--output_path", "-o", help="Adapter folder to write "
                                "(PEFT format: adapter_config.json, adapter_model.safetensors)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the adapter in --output_path (after Ctrl-C, "
                                "or with a larger --max_steps)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    options: dict | None = None,
):
    """Fine-tune with LoRA on the CPU; writes a PEFT adapter that `peft` loads, `auto-opt --adapter_path`
    merges into an optimized build (or `--adapters NAME=DIR` keeps as a run-time adapter), plus pressa.json
    (data, template, losses) and loss.png.

    The loss is on the answer: with --text_template, the text from its last {field} on; with
    --use_chat_template, the assistant turns; with --text_field, every token. Ctrl-C writes the adapter
    trained so far (exit 130); --resume continues it."""
    from pressa.finetune.run import finetune

    cfg = validated(FinetuneConfig, options, FINETUNE_FLAGS)
    with log.progress_bar("training") as progress:
        manifest = finetune(model, cfg.data_options(), cfg.lora_options(), output, overwrite, resume, log.info,
                            progress)
    f = manifest["finetune"]
    shown = {"steps": f["steps"], "first loss": f["losses"][0] if f["losses"] else None,
             "last loss": f["losses"][-1] if f["losses"] else None, "eval loss before": f["eval_loss_before"],
             "eval loss after": f["eval_loss_after"], "steps/s": f["steps_per_s"], "peak RSS MB": f["peak_rss_mb"],
             "adapter": str(output)}
    print_result(f if as_json else shown, as_json, "finetune")
