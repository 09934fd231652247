"""FineTune (Olive's LoRA pass): a LoRA adapter trained on the input model, merged, and handed on as a model
folder the next pass builds from (`pressa run`: fine-tune, then ModelBuilder, with the accuracy guard
measuring the fine-tuned model). Its options are `pressa finetune`'s, declared here once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pressa.passes.base import Pass, PassConfig, PassContext, olive


class FinetuneConfig(PassConfig):
    method: Literal["lora", "qlora"] = Field("lora", description="lora (qlora needs a CUDA-only 4-bit backend)")
    lora_r: int = Field(64, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (the update is scaled by alpha/r)")
    lora_dropout: float = Field(0.05, ge=0.0, le=0.9)
    target_modules: str | None = Field(None, description="comma-separated module names (e.g. q_proj,v_proj); "
                                       "default every linear layer")
    torch_dtype: str = Field("float32", description="float32, bfloat16 or float16")
    data_name: str | None = Field(None, description="a Hugging Face dataset (from the local cache when offline)")
    data_files: str | None = Field(None, description="comma-separated files: .json, .jsonl, .csv, .parquet or "
                                   ".txt (one example per line)")
    train_split: str = Field("train")
    eval_split: str | None = Field(None, description="default: a held-out share of the training records")
    eval_share: float = Field(0.05, ge=0.0, le=0.5, description="the held-out share without --eval_split")
    text_field: str | None = Field(None, description="the column of whole training texts (loss on every token); "
                                   "default text")
    text_template: str | None = Field(None, description="e.g. \"### Question: {instruction}\\n### Answer: "
                                      "{response}\"; \\n and \\t mean newline and tab; the loss is on the text "
                                      "from the last {field} on (the answer)")
    use_chat_template: bool = Field(False, description="the model's chat template over a 'messages' column or "
                                    "instruction/response columns; the loss is on the assistant turns")
    max_seq_len: int = Field(1024, ge=8)
    max_samples: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1, json_schema_extra=olive("per_device_train_batch_size"))
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int = Field(100, ge=1)
    learning_rate: float = Field(2e-4, ge=0.0)
    seed: int = Field(42)

    def data_options(self):
        from pressa.finetune.data import DataOptions

        return DataOptions(**self.model_dump(include=set(DataOptions.__dataclass_fields__)))

    def lora_options(self):
        from pressa.finetune.train import LoraOptions

        return LoraOptions(**self.model_dump(include=set(LoraOptions.__dataclass_fields__)))


class FineTune(Pass):
    name = "finetune"
    aliases = ("LoRA", "lora", "FineTune")
    summary = "LoRA fine-tuning; hands the merged model to the next pass (ModelBuilder)"
    Config = FinetuneConfig
    input_kind = "llm"
    output_kind = "llm"

    def run(self, model_path, config: FinetuneConfig, out_dir: Path, ctx: PassContext) -> dict:
        import tempfile

        from pressa.finetune.run import finetune, merged_folder

        with tempfile.TemporaryDirectory() as tmp:
            manifest = finetune(str(model_path) if model_path else None, config.data_options(),
                                config.lora_options(), Path(tmp) / "adapter", log=ctx.log, progress=ctx.progress)
            merged_folder(str(model_path) if model_path else None, Path(tmp) / "adapter", out_dir)
        f = manifest["finetune"]
        return {"kind": "hf-folder", "steps": f["steps"], "eval_loss_before": f["eval_loss_before"],
                "eval_loss_after": f["eval_loss_after"], "steps_per_s": f["steps_per_s"]}
