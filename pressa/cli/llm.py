"""Commands for decoder LLMs: build (auto-opt), run (generate, chat), measure (eval, benchmark), and
`info` about the runtimes."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pressa import log
from pressa.cli.app import app, print_result, runtime_flags
from pressa.cli.options import validated, with_config_options
from pressa.genai.speculative import check_mode
from pressa.passes.builder import BuilderConfig
from pressa.textio import check_text, read_stdin, read_text


def _list_architectures(value: bool) -> None:
    if value:
        print_architectures()
        raise typer.Exit(0)


def print_architectures() -> None:
    """The architecture table: each row's onnxruntime-genai type, GGUF name, algorithms and features."""
    from pressa.capture.architectures import ARCHITECTURES

    typer.echo("decoder architectures (auto-opt from Hugging Face folders, Hub ids or GGUF):")
    typer.echo(f"  {'model_type':14} {'genai type':12} {'GGUF':11} {'algorithms':22} features")
    for name, arch in ARCHITECTURES.items():
        algos = "rtn awq gptq --ratio" if arch.calibrated else "rtn"
        typer.echo(f"  {name:14} {arch.genai_type:12} {arch.gguf_arch or arch.model_type:11} {algos:22} "
                   f"{arch.features() or '-'}")


AUTO_OPT_FLAGS = {"group_size": ("--group-size", "--block_size"), "symmetric": ("--sym/--asym",),
                  "calibration_data": ("--calibration-data",), "adapter_path": ("--adapter_path", "--adapter-path"),
                  "target_size_mb": ("--target-size",)}


@app.command("auto-opt")
@with_config_options(BuilderConfig, AUTO_OPT_FLAGS, skip=("execution_provider",))
def auto_opt(
    model: str | None = typer.Option(None, "--model_name_or_path", "-m", "--model",
                                        help="HF folder, .gguf file, Hub id (org/name), or a bundled name. "
                                             "Default: the bundled SmolLM2-135M-Instruct."),
    output: Path = typer.Option(Path("models/optimized"), "--output_path", "-o", "--output",
                                help="Artifact folder to write (written atomically)."),
    device: str = typer.Option("cpu", "--device", help="cpu or gpu (Olive's names; cuda is taken for gpu)."),
    provider: str = typer.Option("CPUExecutionProvider", "--provider",
                                 help="CPUExecutionProvider or CUDAExecutionProvider."),
    use_ort_genai: bool = typer.Option(True, "--use_ort_genai/--no-ort-genai",
                                       help="Write genai_config.json so onnxruntime-genai loads the folder "
                                            "(always written; accepted for Olive compatibility)."),
    output_format: str = typer.Option("onnx", "--format", help="onnx (the ONNX Runtime GenAI folder pressa runs) "
                                      "or openvino (OpenVINO IR for OpenVINO GenAI / Model Server, as `pressa "
                                      "export --format openvino` writes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    log_level: int = typer.Option(1, "--log_level", "--log-level", min=0, max=4,
                                  help="0 debug, 1 info, 2 warnings, 3 errors, 4 critical."),
    list_architectures: bool = typer.Option(False, "--list-architectures", is_eager=True,
                                            callback=_list_architectures,
                                            help="Print the supported architectures, what each supports, and exit."),
    options: dict | None = None,
):
    """Optimize a decoder LLM for ONNX Runtime (Olive's `auto-opt` flags accepted as Olive spells them).

    Runs as a one-pass workflow (ModelBuilder, whose options these are: `pressa passes` lists them);
    the artifact's pressa.json records it, so `pressa run --config ARTIFACT/pressa.json -o NEW`
    rebuilds the same model."""
    from pressa.engine.execute import execute, job
    from pressa.errors import BadArgument

    log.set_level(log_level)
    dev = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}.get(provider)
    if dev is None:
        raise BadArgument(f"--provider {provider!r}: use CPUExecutionProvider or CUDAExecutionProvider")
    if device not in ("cpu", "gpu", "cuda"):
        raise BadArgument(f"--device {device!r}: use cpu or gpu")
    if device != "cpu" and dev == "cpu":
        dev = "cuda"
    config = validated(BuilderConfig, {**options, "execution_provider": dev}, AUTO_OPT_FLAGS)
    if output_format not in ("onnx", "openvino"):
        raise BadArgument(f"--format {output_format!r}: use onnx or openvino")
    workflow = job(model, [("auto-opt", "model-builder", config.model_dump(exclude_unset=True))])
    if output_format == "openvino":
        _auto_opt_openvino(workflow, output, overwrite)
        return
    with log.progress_bar("auto-opt") as bar:
        manifest = execute(workflow, output, overwrite, bar, log.info)
    log.info(f"wrote {output} ({manifest['size_bytes'] / 1e6:.1f} MB, {manifest['build_seconds']:.1f} s)")


def _auto_opt_openvino(workflow: dict, output: Path, overwrite: bool) -> None:
    """The ONNX build in a temporary folder, then its OpenVINO IR export at `output`."""
    from pressa.artifact import check_output
    from pressa.engine.execute import execute
    from pressa.runtime.ir_export import export_openvino
    from pressa.tempdirs import temp_dir

    check_output(Path(output), overwrite, [workflow["input_model"]])
    with temp_dir("auto-opt-") as tmp:
        with log.progress_bar("auto-opt") as bar:
            execute(workflow, Path(tmp) / "model", False, bar, log.info)
        with log.status("exporting to OpenVINO IR"):
            r = export_openvino(Path(tmp) / "model", output, overwrite)
    log.info(f"wrote {output} (OpenVINO IR, {r['ir_bytes'] / 1e6:.1f} MB)")


def _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, adapter=None):
    from pressa.errors import BadArgument
    from pressa.genai.sampling import SamplingConfig

    for s in stop or []:
        check_text(s, "--stop")
        if not s:
            raise BadArgument("--stop '': an empty stop string would end every generation at once; give some text")
    return SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=repetition_penalty, seed=seed, max_new_tokens=max_new_tokens,
                          stop=list(stop or []), adapter=adapter)


def _schema_grammar(path: Path) -> str:
    from pressa.errors import BadArgument
    from pressa.genai.constraints import json_schema_grammar

    if not path.is_file():
        raise BadArgument(f"--json-schema {path}: no such file; give a JSON schema file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadArgument(f"--json-schema {path}: not UTF-8 text; give a JSON schema file") from None
    return json_schema_grammar(text)


_MAXNEW = typer.Option(256, "--max-new-tokens", "--max_new_tokens", min=1, help="Tokens to generate at most.")
_TEMP = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy; above 0 samples.")
_TOPK = typer.Option(0, "--top-k", min=0, help="Sample from the k most likely tokens (0 = off).")
_TOPP = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (1 = off).")
_REP = typer.Option(1.0, "--repetition-penalty", min=0.01, help="Penalty on tokens seen already (1 = off).")
_SEED = typer.Option(None, "--seed", help="Random seed for sampling.")
_STOP = typer.Option(None, "--stop", help="Stop when this text appears (repeatable).")
_SPEC = typer.Option("off", "--speculative", help="lookup: draft tokens by looking the latest few up in the "
                     "prompt and what came since, and verify them in one step: the same output, faster where it "
                     "echoes the input (summaries, edits, code, extraction); draft: a small model drafts "
                     "(--draft-model); off: one token per step.")
_DRAFT = typer.Option(None, "--draft-model", help="With --speculative draft: a smaller artifact with the same "
                      "vocabulary whose tokens the model verifies (e.g. an int4 build drafting for the fp32 one).")
_ADAPTER = typer.Option(None, "--adapter", help="Decode with this run-time LoRA adapter of the artifact "
                        "(auto-opt --adapters NAME=DIR); default: the base model.")


@app.command()
@runtime_flags
def generate(
    model: Path = typer.Argument(..., help="Artifact folder written by auto-opt."),
    prompts: list[str] = typer.Argument(..., help="One or more prompts (several run as one batch); - reads stdin."),
    max_new_tokens: int = _MAXNEW, temperature: float = _TEMP, top_k: int = _TOPK, top_p: float = _TOPP,
    repetition_penalty: float = _REP, seed: int | None = _SEED, stop: list[str] | None = _STOP,
    chat: bool | None = typer.Option(None, "--chat/--no-chat",
                                        help="Wrap prompts in the model's chat template (default: when it has one)."),
    adapter: str | None = _ADAPTER, speculative: str = _SPEC, draft_model: Path | None = _DRAFT,
    json_schema: Path | None = typer.Option(None, "--json-schema", help="Hold the answer to this JSON schema "
                                            "(a .json file), token by token: the output always parses and "
                                            "validates, unless --max-new-tokens cuts it short."),
    runtime=None,
):
    """Generate text. Only the generated text goes to stdout, streamed as it is produced."""
    import dataclasses

    import pressa
    from pressa.artifact import ArtifactKind, require_kind

    require_kind(model, ArtifactKind.DECODER_LLM, "generate")
    cfg = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, adapter)
    if json_schema is not None:
        cfg = dataclasses.replace(cfg, grammar=_schema_grammar(json_schema))
    cfg = dataclasses.replace(cfg, speculative=check_mode(speculative))
    prompts = [read_stdin() if p == "-" else check_text(p, "the prompt") for p in prompts]
    m = pressa.load(model, **runtime.model_dump(), speculative=cfg.speculative, draft_model=draft_model)
    if len(prompts) == 1:
        for piece in m.stream(prompts[0], chat=chat, cfg=cfg):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    outs = [""] * len(prompts)
    for ev in m.stream_batch(prompts, cfg=cfg, chat=chat):
        outs[ev.row] += ev.text
    for o in outs:
        sys.stdout.write(o + "\n")


@app.command()
@runtime_flags
def chat(
    model: Path = typer.Argument(..., help="Artifact folder written by auto-opt."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = _MAXNEW, temperature: float = typer.Option(0.7, "--temperature", min=0.0),
    top_k: int = typer.Option(50, "--top-k", min=0), top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0),
    repetition_penalty: float = typer.Option(1.1, "--repetition-penalty", min=0.01),
    seed: int | None = _SEED, adapter: str | None = _ADAPTER, speculative: str = _SPEC,
    draft_model: Path | None = _DRAFT, runtime=None,
):
    """Chat in the terminal with the model's chat template. /reset clears history, /exit or Ctrl-D quits.

    When the conversation outgrows the context, the oldest turns are dropped (the system prompt stays);
    a message too long on its own is refused and the chat goes on."""
    import pressa
    from pressa.artifact import ArtifactKind, require_kind
    from pressa.errors import BadArgument

    require_kind(model, ArtifactKind.DECODER_LLM, "chat")
    system = check_text(system, "--system") if system else None
    cfg = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, None, adapter)
    cfg.speculative = check_mode(speculative)
    m = pressa.load(model, **runtime.model_dump(), speculative=cfg.speculative, draft_model=draft_model)
    m.session.adapter_id(adapter)
    if not m.has_chat_template:
        raise BadArgument("this model has no chat template; use `pressa generate --no-chat`")
    if max_new_tokens >= m.session.context_length:
        raise BadArgument(f"--max-new-tokens {max_new_tokens} leaves no room for a message in the model's context "
                          f"of {m.session.context_length} tokens; lower it")
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = check_text(input("> " if interactive else ""), "that message")
        except EOFError:
            break
        except (UnicodeDecodeError, BadArgument):
            log.err.print("error: that message is not valid UTF-8 text; type it again")
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if line.strip():
            history = _chat_turn(m, history, line, cfg)


def _chat_turn(m, history: list[dict], line: str, cfg) -> list[dict]:
    """One exchange: the reply streamed to stdout; returns the history to go on with."""
    from pressa.errors import BadArgument

    try:
        kept, dropped = m.fit_history([*history, {"role": "user", "content": line}], cfg.max_new_tokens)
    except BadArgument as err:
        log.err.print(f"error: {err}")
        return history
    if dropped:
        log.warn(f"the conversation outgrew the context: dropped the {dropped} oldest messages")
    reply = ""
    for piece in m.stream(kept, cfg=cfg):
        reply += piece
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return [*kept, {"role": "assistant", "content": reply}]


@app.command("eval")
@runtime_flags
def eval_cmd(
    model: Path = typer.Argument(..., help="Artifact folder to evaluate."),
    perplexity: Path | None = typer.Option(None, "--perplexity", help="Text file: perplexity by the shared "
                                              "protocol (whole file, non-overlapping windows, no cache)."),
    windows: int = typer.Option(32, "--windows", min=1, help="Number of windows (the first N)."),
    window_size: int = typer.Option(512, "--window-size", min=2, help="Tokens per window."),
    batch: int = typer.Option(2, "--batch", min=1, help="Windows per forward pass."),
    reference: str | None = typer.Option(None, "--reference", help="The original model (HF folder, .gguf, "
                                            "bundled name, or a pressa artifact) to measure agreement with."),
    data: Path | None = typer.Option(None, "--data", help="Text file for --reference: one sample per line."),
    samples: int = typer.Option(32, "--samples", min=1, help="Lines of --data to use."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    adapter: str | None = typer.Option(None, "--adapter", help="Perplexity with this run-time LoRA adapter of "
                                       "the artifact (auto-opt --adapters)."),
    runtime=None,
):
    """Measure how much worse, and at what size: perplexity on a text file and/or agreement (top-1, KL)
    with the original, next to the artifact's bits per weight (codes, scales, zero points, embedding
    and float tensors over the model's parameters)."""
    from pressa.artifact import ArtifactKind, require_kind
    from pressa.errors import BadArgument

    require_kind(model, ArtifactKind.DECODER_LLM, "eval")
    if runtime.backend == "openvino":
        raise BadArgument("eval (logits at every position) runs on --backend onnxruntime only")
    threads = runtime.threads
    if perplexity is None and reference is None:
        raise BadArgument("give --perplexity FILE and/or --reference MODEL --data FILE")
    from pressa.evaluate.footprint import weight_footprint

    result: dict = {"artifact": str(model), **weight_footprint(model)}      # size and loss read together
    if perplexity is not None:
        from pressa.evaluate.perplexity import perplexity as ppl

        text = read_text(perplexity)
        with log.progress_bar("perplexity") as bar:
            result.update(ppl(model, text, windows, window_size, batch, threads, bar, adapter))
        if adapter:
            result["adapter"] = adapter
    if reference is not None:
        if adapter:
            raise BadArgument("--adapter applies to --perplexity; --reference compares the base")
        if data is None:
            raise BadArgument("--reference needs --data FILE (the inputs both models see)")
        from pressa.evaluate.agreement import agreement, artifact_logits, reference_logits, text_samples
        from pressa.genai.tokenizer import TextTokenizer

        tok = TextTokenizer(model)
        chunks = text_samples(read_text(data), lambda s: tok.encode(s, add_special_tokens=False), samples)
        if not chunks:
            raise BadArgument(f"{data}: no usable lines (each needs 40+ characters)")
        with log.status(f"loading the reference {reference}"):
            ref, how, keep = reference_logits(reference, threads)
        with log.progress_bar("agreement") as bar:
            result.update({**agreement(artifact_logits(model, threads), ref, chunks, bar), "reference": how})
        del keep
    print_result(result, as_json, f"eval {model}")


@app.command()
@runtime_flags
def benchmark(
    model: Path = typer.Argument(..., help="Artifact folder to time: a decoder LLM, an encoder or any ONNX model."),
    prompt_tokens: int = typer.Option(512, "--prompt-tokens", min=1, help="LLM: prompt length for TTFT and prefill."),
    new_tokens: int = typer.Option(128, "--new-tokens", min=2, help="LLM: greedy tokens to time decoding."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Other models: rows per batch for rows/s."),
    seq_len: int = typer.Option(128, "--seq-len", min=1, help="Other models: tokens per row."),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed repetitions (median reported)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed repetitions first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    adapter: str | None = _ADAPTER, speculative: str = _SPEC, draft_model: Path | None = _DRAFT, runtime=None,
):
    """Time an artifact. LLMs: decode tokens/s, time to first token, prefill tokens/s; encoders and other
    ONNX models: rows (sentences)/s at --batch-size x --seq-len and latency at batch 1. Peak RSS for both."""
    from pressa.artifact import ArtifactKind, kind_of
    from pressa.evaluate.latency import benchmark as run_benchmark
    from pressa.evaluate.latency import benchmark_tensor_model

    with log.progress_bar("benchmark") as bar:
        if kind_of(model) == ArtifactKind.DECODER_LLM:
            result = run_benchmark(model, prompt_tokens, new_tokens, runs, warmup, progress=bar, runtime=runtime,
                                   adapter=adapter, speculative=check_mode(speculative), draft_model=draft_model)
        else:
            result = benchmark_tensor_model(model, runtime, batch_size, seq_len, runs, warmup, bar)
    print_result(result, as_json, f"benchmark {model}")


@app.command()
def info(artifact: Path | None = typer.Argument(None, help="An artifact: say which runtime --backend auto chose "
                                                          "for it here, with both runtimes' figures")):
    """Versions of pressa and its runtimes, execution providers, devices and decoder architectures; with an
    ARTIFACT, what `--backend auto` measured and chose for it on this machine."""
    if artifact is not None:
        from pressa.runtime.choose import auto_choices

        for line in auto_choices(artifact):
            typer.echo(line)
        return
    import platform

    import onnxruntime as ort

    import pressa
    from pressa.runtime.session import cpu_name, physical_cores

    rows = [("pressa", pressa.__version__), ("python", platform.python_version()),
            ("onnxruntime", ort.__version__), ("execution providers", ", ".join(ort.get_available_providers())),
            ("default device", ort.get_device())]
    for mod in ("onnx", "numpy", "tokenizers", "onnxruntime_genai", "torch", "transformers"):
        try:
            m = __import__(mod) if mod not in ("torch", "transformers") else None
            ver = getattr(m, "__version__", "installed") if m else _dist_version(mod)
        except ImportError:
            ver = "not installed"
        rows.append((mod.replace("_", "-"), ver))
    try:
        import openvino as ov

        rows += [("openvino", ov.__version__), ("openvino devices", ", ".join(
            f"{d} ({ov.Core().get_property(d, 'FULL_DEVICE_NAME')})" for d in ov.Core().available_devices))]
    except ImportError:
        rows.append(("openvino", "not installed (pip install 'pressa[openvino]')"))
    cpu = cpu_name()
    rows.append(("cpu", f"{cpu}, {physical_cores()} physical cores"))
    for k, v in rows:
        typer.echo(f"{k:20} {v}")
    print_architectures()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
