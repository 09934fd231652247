"""`pressa finetune`: a LoRA adapter, with Olive's flags as Olive spells them."""

from __future__ import annotations

from pathlib import Path

import typer

from pressa import log
from pressa.cli.app import app, print_result


@app.command("finetune")
def finetune_cmd(
    model: str | None = typer.Option(None, "--model_name_or_path", "-m", help="HF folder, Hub id, .gguf file "
                                     "or bundled name. Default: the bundled SmolLM2-135M-Instruct."),
    output: Path = typer.Option(Path("adapters/lora"), "--output_path", "-o", help="Adapter folder to write "
                                "(PEFT format: adapter_config.json, adapter_model.safetensors)."),
    method: str = typer.Option("lora", "--method", help="lora (qlora needs a CUDA-only 4-bit backend)."),
    lora_r: int = typer.Option(64, "--lora_r", min=1, help="LoRA rank."),
    lora_alpha: int = typer.Option(16, "--lora_alpha", min=1, help="LoRA alpha (the update is scaled by alpha/r)."),
    lora_dropout: float = typer.Option(0.05, "--lora_dropout", min=0.0, max=0.9),
    target_modules: str | None = typer.Option(None, "--target_modules", help="Comma-separated module names "
                                              "(e.g. q_proj,v_proj). Default: every linear layer."),
    torch_dtype: str = typer.Option("float32", "--torch_dtype", help="float32, bfloat16 or float16."),
    data_name: str | None = typer.Option(None, "--data_name", help="A Hugging Face dataset (from the local cache "
                                         "when offline)."),
    data_files: str | None = typer.Option(None, "--data_files", help="Comma-separated files: .json, .jsonl, .csv, "
                                          ".parquet or .txt (one example per line)."),
    train_split: str = typer.Option("train", "--train_split"),
    eval_split: str | None = typer.Option(None, "--eval_split", help="Default: a held-out share of the training "
                                          "records (--eval_share)."),
    eval_share: float = typer.Option(0.05, "--eval_share", min=0.0, max=0.5),
    text_field: str | None = typer.Option(None, "--text_field", help="The column holding whole training texts "
                                          "(loss on every token). Default: text."),
    text_template: str | None = typer.Option(None, "--text_template", help="e.g. \"### Question: {instruction}"
                                             "\\n### Answer: {response}\"; \\n and \\t mean newline and tab. The "
                                             "loss is on the text from the last {field} on (the answer)."),
    use_chat_template: bool = typer.Option(False, "--use_chat_template", help="The model's chat template over a "
                                           "'messages' column or instruction/response columns; the loss is on "
                                           "the assistant turns."),
    max_seq_len: int = typer.Option(1024, "--max_seq_len", min=8),
    max_samples: int | None = typer.Option(None, "--max_samples", min=1),
    batch_size: int = typer.Option(4, "--batch_size", "--per_device_train_batch_size", min=1),
    gradient_accumulation_steps: int = typer.Option(1, "--gradient_accumulation_steps", min=1),
    max_steps: int = typer.Option(100, "--max_steps", min=1),
    learning_rate: float = typer.Option(2e-4, "--learning_rate", min=0.0),
    seed: int = typer.Option(42, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the adapter in --output_path (after Ctrl-C, "
                                "or with a larger --max_steps)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Fine-tune with LoRA on the CPU; writes a PEFT adapter that `peft` loads, `auto-opt --adapter_path`
    merges into an optimized build, plus pressa.json (data, template, losses) and loss.png.

    Ctrl-C writes the adapter trained so far (exit 130); --resume continues it."""
    from pressa.finetune.data import DataOptions
    from pressa.finetune.run import finetune
    from pressa.finetune.train import LoraOptions

    data = DataOptions(data_name=data_name, data_files=data_files, train_split=train_split, eval_split=eval_split,
                       eval_share=eval_share, text_field=text_field, text_template=text_template,
                       use_chat_template=use_chat_template, max_seq_len=max_seq_len, max_samples=max_samples,
                       seed=seed)
    lora = LoraOptions(method=method, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                       target_modules=target_modules, torch_dtype=torch_dtype, batch_size=batch_size,
                       gradient_accumulation_steps=gradient_accumulation_steps, max_steps=max_steps,
                       learning_rate=learning_rate, seed=seed)
    with log.progress_bar("training") as progress:
        manifest = finetune(model, data, lora, output, overwrite, resume, log.info, progress)
    f = manifest["finetune"]
    shown = {"steps": f["steps"], "first loss": f["losses"][0] if f["losses"] else None,
             "last loss": f["losses"][-1] if f["losses"] else None, "eval loss before": f["eval_loss_before"],
             "eval loss after": f["eval_loss_after"], "steps/s": f["steps_per_s"], "peak RSS MB": f["peak_rss_mb"],
             "adapter": str(output)}
    print_result(f if as_json else shown, as_json, "finetune")
