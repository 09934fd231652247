"""LoRA fine-tuning (`pressa finetune`): a PEFT adapter trained on examples from pressa.finetune.data.

The model is any source pressa reads: a Hugging Face folder or Hub id as it is; a GGUF file or the bundled
name is first written out as a Hugging Face folder (dequantized weights, under the names the family's
checkpoints use). Ctrl-C stops after the current step and the adapter trained so far is written (exit
130); `--resume` continues it from the state saved beside it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pressa.errors import BadArgument
from pressa.finetune.data import DataOptions, Example, examples, records

STATE = "trainer_state.pt"


@dataclass
class LoraOptions:
    method: str = "lora"
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str | None = None          # comma-separated; default every linear layer
    torch_dtype: str = "float32"
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 100
    learning_rate: float = 2e-4
    seed: int = 42


@dataclass
class Run:
    """What a training run records (pressa.json) and resumes from."""
    step: int = 0
    losses: list[float] = field(default_factory=list)
    eval_before: float | None = None
    eval_after: float | None = None
    seconds: float = 0.0
    interrupted: bool = False


def trainable_folder(spec: str | None, work: Path) -> str:
    """A folder transformers loads: the source's own for Hugging Face folders and Hub ids; otherwise the
    source's config, weights and tokenizer written out (GGUF, the bundled model)."""
    from pressa.capture.config import decoder_config
    from pressa.sources import open_source

    src = open_source(spec)
    if src.kind in ("hf", "hub"):
        return src.location
    cfg = decoder_config(src.config)
    if cfg.arch.hf_names or cfg.arch.moe:
        raise BadArgument(f"a {cfg.arch.model_type} GGUF cannot be made trainable here yet; give its Hugging Face "
                          "folder or Hub id")
    work.mkdir(parents=True, exist_ok=True)
    write_folder(src, src.weights, work)
    return str(work)


def write_folder(src, weights, folder: Path) -> None:
    """The source's config, these weights (one model.safetensors) and its tokenizer files as a Hugging
    Face-style folder that transformers and pressa read."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    # safetensors writes an array's buffer as row-major whatever its order: a transposed view (a Conv1D
    # weight, a merged fan_in_fan_out delta) must be made C-contiguous or it is saved scrambled
    save_file({n: np.ascontiguousarray(weights(n)) for n in sorted(weights.names)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(src.config, indent=1))
    for name, data in src.tokenizer_files.items():
        (folder / name).write_bytes(data)


def _lora_model(folder: str, o: LoraOptions):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    if o.method != "lora":
        raise BadArgument(f"--method {o.method}: only lora is built; qlora needs a 4-bit training backend "
                          "(bitsandbytes) that runs on CUDA only, not on this CPU path")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(o.torch_dtype)
    if dtype is None:
        raise BadArgument(f"--torch_dtype {o.torch_dtype}: use float32, bfloat16 or float16")
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    targets = [t.strip() for t in o.target_modules.split(",")] if o.target_modules else "all-linear"
    config = LoraConfig(r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:          # peft: a target module the model does not have
        raise BadArgument(f"--target_modules: {str(err).splitlines()[0][:200]}") from None


def _batch(exs: list[Example], pad: int):
    import torch

    width = max(len(e.ids) for e in exs)
    ids = torch.full((len(exs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(exs), width), dtype=torch.long)
    labels = torch.full((len(exs), width), -100, dtype=torch.long)
    for b, e in enumerate(exs):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        mask[b, :n] = 1
        labels[b, :n] = torch.tensor([t if keep else -100 for t, keep in zip(e.ids, e.trained)])
    return ids, mask, labels


def eval_loss(model, exs: list[Example], pad: int, batch_size: int) -> float | None:
    """Mean loss per trained token over the examples (None without examples)."""
    import torch

    if not exs:
        return None
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(exs), batch_size):
            ids, mask, labels = _batch(exs[i: i + batch_size], pad)
            n = int((labels[:, 1:] != -100).sum())
            if n:
                total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
                count += n
    model.train()
    return total / count if count else None


def _batches(exs: list[Example], size: int, seed: int):
    """Batches forever, reshuffled each pass over the data."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(exs)))
        rng.shuffle(order)
        for i in range(0, len(order), size):
            yield [exs[j] for j in order[i: i + size]]


def train(folder: str, data: DataOptions, o: LoraOptions, out: Path, progress, resume: Path | None = None,
          log=lambda s: None) -> Run:
    """Train; the adapter (and the state to resume from) is written into `out`."""
    import torch

    from pressa.genai.tokenizer import TextTokenizer

    torch.manual_seed(o.seed)
    tok = TextTokenizer(Path(folder))
    tok.eos_id = tok.token_id(tok.eos_token)
    train_recs, eval_recs = records(data)
    train_exs, eval_exs = examples(tok, train_recs, data, "training"), examples(tok, eval_recs, data, "eval")
    pad = tok.token_id(tok.config.get("pad_token") if isinstance(tok.config.get("pad_token"), str) else None)
    pad = pad if pad is not None else (tok.eos_id or 0)
    model = _lora_model(folder, o)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.learning_rate)
    run = Run()
    if resume:
        run = _resumed(model, opt, resume)
    else:
        run.eval_before = eval_loss(model, eval_exs, pad, o.batch_size)
    model.train()
    log(f"training on {len(train_exs)} examples ({len(eval_exs)} held out for eval), steps {run.step + 1} to "
        f"{o.max_steps}; Ctrl-C stops and keeps the adapter")
    batches = _batches(train_exs, o.batch_size, o.seed + run.step)
    t0 = time.perf_counter()
    start = run.step
    try:
        while run.step < o.max_steps:
            loss_sum = 0.0
            for _ in range(o.gradient_accumulation_steps):
                ids, mask, labels = _batch(next(batches), pad)
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise BadArgument(f"the loss became {value} at step {run.step + 1}; lower --learning_rate")
                (loss / o.gradient_accumulation_steps).backward()
                loss_sum += value / o.gradient_accumulation_steps
            opt.step()
            opt.zero_grad()
            run.step += 1
            run.losses.append(round(loss_sum, 5))
            rate = (run.step - start) / (time.perf_counter() - t0)
            progress(run.step, o.max_steps, f"loss {loss_sum:.3f}, {rate:.2f} steps/s")
    except KeyboardInterrupt:
        run.interrupted = True
    run.seconds += time.perf_counter() - t0
    run.eval_after = eval_loss(model, eval_exs, pad, o.batch_size) if not run.interrupted else None
    model.save_pretrained(str(out))
    torch.save({"optimizer": opt.state_dict(), "run": asdict(run)}, out / STATE)
    return run


def _resumed(model, opt, folder: Path) -> Run:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state_file = folder / STATE
    if not state_file.is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise BadArgument(f"--resume: {folder} holds no adapter and {STATE} to resume from")
    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    state = torch.load(state_file, weights_only=False)
    opt.load_state_dict(state["optimizer"])
    run = Run(**{**state["run"], "interrupted": False})
    return run
