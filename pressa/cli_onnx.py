"""Commands for any ONNX model (encoders, classifiers, vision, files users already have): capture,
optimize, quantize, convert-fp16, compare, embed, passes. Registered on pressa.cli's app."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pressa import log
from pressa.cli import _THREADS, _print_result, app

_OUT = typer.Option(..., "--output", "-o", "--output_path", help="Artifact folder to write (written atomically).")
_OVER = typer.Option(False, "--overwrite", help="Replace an existing output folder.")
_SRC = typer.Argument(..., help="An .onnx file or an artifact folder.")


def _done(output: Path, manifest: dict) -> None:
    log.info(f"wrote {output} ({manifest['size_bytes'] / 1e6:.1f} MB)")


def _scope(names: list[str] | None, types: list[str] | None, patterns: list[str] | None) -> dict:
    return {"names": names or [], "types": types or [], "patterns": patterns or []}


@app.command()
def capture(
    model: str = typer.Option(..., "--model", "-m", "--model_name_or_path",
                              help="Hugging Face folder, bundled name (all-MiniLM-L6-v2) or Hub id."),
    output: Path = _OUT,
    task: str = typer.Option("feature-extraction", "--task", help="feature-extraction, text-classification, "
                             "token-classification, question-answering, fill-mask, image-classification."),
    opset: int = typer.Option(18, "--opset", min=14, help="ONNX opset."),
    overwrite: bool = _OVER,
):
    """Export a Hugging Face model to ONNX (dynamic batch and sequence axes), checked against torch."""
    from pressa.passes.base import apply_pass

    with log.status(f"capturing {model}"):
        m = apply_pass("capture", model, output, {"task": task, "opset": opset}, overwrite)
    log.info(f"parity with torch: max |diff| {m['passes'][-1]['parity_max_abs_diff']:.1e}")
    _done(output, m)


@app.command()
def optimize(
    model: Path = _SRC, output: Path = _OUT,
    model_type: str | None = typer.Option(None, "--model-type", "--model_type",
                                          help="Family for the fusions (bert, gpt2, vit...); default: config.json."),
    num_heads: int | None = typer.Option(None, "--num-heads", help="Attention heads, if not in config.json."),
    attention: bool = typer.Option(True, "--attention/--no-attention", help="Fuse self-attention."),
    overwrite: bool = _OVER,
):
    """Transformer fusions (attention, LayerNorm, GELU, SkipLayerNorm, bias) and cleanups, each checked."""
    from pressa.passes.base import apply_pass

    with log.progress_bar("optimize") as bar:
        m = apply_pass("optimize", model, output, {"model_type": model_type, "num_heads": num_heads,
                                                   "fuse_attention": attention}, overwrite, bar, log.message)
    fired = m["passes"][-1].get("fusions", {})
    log.info("fusions: " + (", ".join(f"{k} x{v}" for k, v in fired.items()) or "none matched"))
    _done(output, m)


@app.command()
def quantize(
    model: Path = _SRC, output: Path = _OUT,
    mode: str = typer.Option("static", "--mode", help="static (QDQ int8, calibrated), dynamic (int8 weights), "
                             "or weight-only (MatMulNBits int4/int8)."),
    calibration_data: Path | None = typer.Option(None, "--calibration-data", help="Text file, image folder, "
                                                  ".npy or .npz (static)."),
    samples: int = typer.Option(300, "--samples", min=1, help="Calibration samples (static)."),
    method: str = typer.Option("minmax", "--method", help="minmax, entropy or percentile (static)."),
    per_channel: bool | None = typer.Option(None, "--per-channel/--per-tensor",
                                            help="Weight scales per output channel (default) or one per tensor."),
    bits: int = typer.Option(4, "--bits", help="4 or 8 (weight-only)."),
    group_size: int = typer.Option(32, "--group-size", "--block_size", help="Group size (weight-only)."),
    ignore_node: list[str] | None = typer.Option(None, "--ignore-node", help="Keep this node in float (repeatable)."),
    ignore_type: list[str] | None = typer.Option(None, "--ignore-type", help="Keep this op type in float."),
    ignore_regex: list[str] | None = typer.Option(None, "--ignore-regex", help="Keep nodes whose name matches."),
    max_drop: float | None = typer.Option(None, "--max-drop", min=0.0, max=1.0,
                                          help="Static: keep the most harmful nodes in float until agreement with "
                                               "the original drops by at most this (e.g. 0.01)."),
    fallback: str = typer.Option("dynamic", "--fallback", help="With --max-drop: dynamic (int8, per-batch "
                                 "ranges) or float for the nodes taken out of static quantization."),
    overwrite: bool = _OVER,
):
    """Quantize any ONNX model: static QDQ int8, dynamic int8, or weight-only int4/int8."""
    from pressa.errors import BadArgument
    from pressa.passes.base import apply_pass

    scope = {"ignored_scope": _scope(ignore_node, ignore_type, ignore_regex)}
    if mode == "static":
        opts = {**scope, "calibration_data": str(calibration_data) if calibration_data else None, "samples": samples,
                "method": method, "max_drop": max_drop, "per_channel": True if per_channel is None else per_channel,
                "fallback": fallback}
    elif mode == "dynamic":
        opts = {**scope, "per_channel": True if per_channel is None else per_channel}
    elif mode in ("weight-only", "weight_only", "int4"):
        mode, opts = "weight-only", {**scope, "bits": bits, "group_size": group_size}
    else:
        raise BadArgument(f"--mode {mode!r}: use static, dynamic or weight-only")
    if max_drop is not None and mode != "static":
        raise BadArgument("--max-drop applies to --mode static")
    with log.progress_bar(f"quantize ({mode})") as bar:
        m = apply_pass(f"quantize-{mode}", model, output, opts, overwrite, bar, log.message)
    rep = m["passes"][-1]
    if rep.get("fallback_nodes"):
        log.info(f"agreement drop {rep['drop']:.4f} with {len(rep['fallback_nodes'])} nodes {rep['fallback']}")
    elif "drop" in rep:
        log.info(f"agreement drop {rep['drop']:.4f} (1 - {'top-1' if rep.get('metric') == 'top1' else 'cosine'})")
    _done(output, m)


@app.command("convert-fp16")
def convert_fp16(model: Path = _SRC, output: Path = _OUT,
                 keep_io_types: bool = typer.Option(True, "--keep-io-types/--fp16-io",
                                                    help="Keep float32 inputs and outputs."),
                 overwrite: bool = _OVER):
    """Convert weights and compute to float16 (GPU inference; CPUs usually run fp32 faster)."""
    from pressa.passes.base import apply_pass

    with log.progress_bar("convert-fp16") as bar:
        m = apply_pass("convert-fp16", model, output, {"keep_io_types": keep_io_types}, overwrite, bar, log.message)
    _done(output, m)


@app.command()
def compare(
    reference: Path = typer.Argument(..., help="The original model (.onnx or artifact folder)."),
    candidate: Path = typer.Argument(..., help="The optimized model."),
    data: Path | None = typer.Option(None, "--data", help="Inputs: text file, image folder, .npy/.npz "
                                     "(default: made-up inputs)."),
    samples: int = typer.Option(100, "--samples", min=1, help="Samples of --data."),
    runs: int = typer.Option(20, "--runs", min=1, help="Timed runs at batch 1 (median)."),
    threads: int | None = _THREADS,
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
):
    """How much worse and how much faster: agreement of outputs, latency and size against the original."""
    from pressa.evaluate.compare import compare as run_compare

    with log.progress_bar("compare") as bar:
        r = run_compare(reference, candidate, data, samples, runs=runs, threads=threads, progress=bar)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    flat = {"samples": r["samples"], "score": r["score"]}
    for name, row in r["outputs"].items():
        flat.update({f"{name} {k}": v for k, v in row.items()})
    flat.update({f"latency ms {k}": v for k, v in r["latency_ms"].items()})
    flat.update({f"size MB {k}": v for k, v in r["size_mb"].items()})
    _print_result(flat, False, f"{candidate} vs {reference}")


@app.command()
def embed(
    model: Path = typer.Argument(..., help="An encoder artifact (e.g. from capture/quantize)."),
    texts: list[str] = typer.Argument(..., help="Texts to embed; - reads lines from stdin."),
    normalize: bool | None = typer.Option(None, "--normalize/--no-normalize",
                                          help="L2-normalize (default: as the model's config says)."),
    threads: int | None = _THREADS,
):
    """Sentence embeddings, one JSON array per text on stdout (pooling as the model's config says)."""
    from pressa.artifact import ArtifactKind, require_kind
    from pressa.runtime.encoder import EncoderModel
    from pressa.textio import check_text, read_stdin

    require_kind(model, ArtifactKind.ONNX, "embed")
    if texts == ["-"]:
        texts = [ln for ln in read_stdin().splitlines() if ln.strip()]
    texts = [check_text(t, "the text") for t in texts]
    vecs = EncoderModel(model, threads=threads).embed(texts, normalize=normalize)
    for v in vecs:
        typer.echo(json.dumps([round(float(x), 7) for x in v]))


@app.command()
def passes():
    """Every pass with its Olive aliases, options and defaults."""
    from pressa.passes.base import all_passes

    for cls in all_passes():
        typer.echo(f"{cls.name}  ({', '.join(cls.aliases)})\n    {cls.summary}")
        for key, f in cls.Config.model_fields.items():
            default = f.default_factory() if f.default_factory else f.default
            if hasattr(default, "model_dump"):
                default = default.model_dump()
            typer.echo(f"    {key} = {json.dumps(default)}  {f.description or ''}")


@app.command("run")
def run_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Workflow config: Olive's JSON/YAML, NNCF's YAML, or "
                                "pressa's own."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (passes, search space, cache hits); "
                                 "run nothing."),
    model: str | None = typer.Option(None, "--model", "-m", help="Input model (overrides the config's)."),
    runs: int = typer.Option(20, "--runs", min=1, help="Timed runs (or decoded tokens) per latency metric."),
    output: Path | None = typer.Option(None, "--output", "-o", "--output_path", help="Output folder (overrides "
                                       "the config's output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output_dir that this command "
                                   "did not write (one a workflow wrote is replaced on a re-run)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Run a workflow: passes in order, each step cached, settings searched, best model + report written.
    An artifact's pressa.json is a config too: `pressa run --config ARTIFACT/pressa.json -o NEW` rebuilds it."""
    from pressa.engine.config import load_workflow
    from pressa.engine.search import dry_run as plan_of
    from pressa.engine.search import run_workflow, written_by_workflow

    wf = load_workflow(config, model, output)
    overwrite = overwrite or written_by_workflow(wf.output_dir)
    if dry_run:
        plan = plan_of(wf)
        if as_json:
            typer.echo(json.dumps(plan, indent=2, default=str))
            return
        typer.echo(f"model: {plan['model']} ({plan['model_kind']})")
        s = plan["search"]
        typer.echo(f"search: {s['algorithm']}, {s['execution_order']}; space {s['space_size']}, "
                   f"trials {s['trials']}")
        for i, steps in enumerate(plan["plan"]):
            typer.echo(f"candidate {i}: " + " -> ".join(
                f"{st['pass']} ({st['type']}{', cached' if st['cached'] else ''})" for st in steps))
        for n in plan["notes"]:
            typer.echo(f"note: {n}")
        return
    from pressa.engine.search import check_workflow_paths

    check_workflow_paths(wf, overwrite)
    for n in wf.notes:
        log.info(f"note: {n}")
    summary = run_workflow(wf, log.message, overwrite, runs)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        log.info(f"chosen: trial {summary['chosen']} of {summary['trials']} ({summary['failed']} failed); "
                 f"wrote {summary['output_dir']} with footprints.json and report.md")


@app.command()
def serve(
    model_name: str | None = typer.Option(None, "--model_name", "--model-name", help="Name clients use."),
    model_path: Path | None = typer.Option(None, "--model_path", "--model-path", help="Artifact folder to serve."),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON: models: [{name, path, max_concurrency, "
                                       "max_queue, max_batch, max_wait_ms, context}] to serve several."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(9000, "--port", min=1, max=65535, help="Port (OpenVINO Model Server's REST default)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="PRESSA_API_KEY",
                                       help="Require this key (Authorization: Bearer) on every route but health "
                                       "(/metrics too, unless --metrics-public)."),
    max_tokens: int = typer.Option(2048, "--max-tokens", min=1, help="Largest max_tokens a request may ask."),
    max_body: int = typer.Option(16 << 20, "--max-body", min=1024, help="Largest request body in bytes."),
    max_concurrency: int = typer.Option(8, "--max-concurrency", min=1, help="Per model: sequences a text "
                                        "generator decodes together (continuous batching), requests a tensor "
                                        "model runs at once."),
    context: int | None = typer.Option(None, "--context", min=2, help="Positions (prompt + new tokens) each "
                                       "generation may hold; default the model's context length, at most 4096."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting per model, beyond those "
                                  "running, before 503 with Retry-After."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Rows per dynamic batch of predict/infer "
                                  "requests (1 = no batching)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0.0, help="How long a batch waits for more "
                                      "requests after its first."),
    log_format: str = typer.Option("json", "--log-format", help="Server logs on stderr: json (one object per "
                                   "line) or text."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log a line per request."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", min=0.0, help="On SIGTERM/Ctrl-C, seconds "
                                           "to let in-flight requests finish before closing them."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", min=0.1, help="Seconds a request body may take to "
                                       "arrive (then 408 and the connection closes)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1, help="Seconds a connection may take to "
                                         "send a request's line and headers (then it is closed)."),
    metrics_public: bool = typer.Option(False, "--metrics-public", help="Answer /metrics without the API key "
                                        "(for a Prometheus scraper that sends none)."),
    threads: int | None = _THREADS,
):
    """Serve artifacts over HTTP: TensorFlow-Serving REST, KServe v2, OpenAI-compatible chat/completions/embeddings."""
    from pressa.errors import BadArgument
    from pressa.serve.app import create_app
    from pressa.serve.models import load_models, model_entries

    defaults = dict(max_concurrency=max_concurrency, max_queue=max_queue, max_batch=max_batch,
                    max_wait_ms=max_wait_ms, context=context)
    if config is not None:
        entries = _serve_config(config, defaults)
    elif model_name and model_path:
        entries = model_entries([{"name": model_name, "path": str(model_path)}], defaults, "--model_name/--model_path")
    else:
        raise BadArgument("give --model_name and --model_path, or --config models.yaml")
    if log_format not in ("json", "text"):
        raise BadArgument(f"--log-format {log_format!r}: use json or text")
    _check_port_free(host, port)
    with log.status("loading models"):
        models = load_models(entries, threads)
    import uvicorn

    from pressa.serve.logs import log_config
    from pressa.serve.middleware import header_timeout_protocol

    cfg = log_config(log_format)
    if not access_log:
        cfg["loggers"]["pressa.access"]["level"] = "WARNING"
    import signal

    # uvicorn handles SIGINT/SIGTERM itself (stop accepting, finish in-flight requests, shut down), then
    # raises the signal again for the handler it found: a stop that went as planned exits 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    app_ = create_app(models, api_key, max_body, max_tokens, body_timeout=body_timeout, metrics_public=metrics_public)
    uvicorn.run(app_, host=host, port=port, log_config=cfg, access_log=False, http=header_timeout_protocol(
        header_timeout), timeout_graceful_shutdown=shutdown_timeout)


def _serve_config(path: Path, defaults: dict) -> list:
    """models.yaml / .json: {models: [{name, path, ...}]}, relative paths beside the file."""
    from pressa.engine.config import read_config
    from pressa.errors import BadArgument
    from pressa.serve.models import model_entries

    data = read_config(path)
    unknown = [k for k in data if k != "models"]
    if unknown:
        raise BadArgument(f"{path}: unknown key {unknown[0]!r}; the file holds models: [{{name, path, ...}}]")
    entries = data.get("models")
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("path"), str) and not Path(e["path"]).is_absolute():
            e["path"] = str(path.parent / e["path"])
    return model_entries(entries, defaults, f"{path}: models")


def _check_port_free(host: str, port: int) -> None:
    """A port already taken is one line before the models load, not a log stream after."""
    import socket

    from pressa.errors import BadArgument

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise BadArgument(f"--host {host}: cannot resolve it ({err.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as err:
            raise BadArgument(f"cannot listen on {host}:{port} ({err.strerror}); is another server using it? "
                              "choose another --port") from None


def _stopped(signum, frame):
    raise SystemExit(0)
