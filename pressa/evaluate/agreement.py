"""Agreement of an artifact with the original model on the same inputs: top-1 next-token agreement
and the mean KL divergence KL(original || artifact) of next-token distributions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pressa.evaluate.perplexity import log_softmax
from pressa.tempdirs import temp_dir

Logits = Callable[[list[int]], np.ndarray]     # token ids -> logits [len, V]


def artifact_logits(folder: Path, threads: int | None = None) -> Logits:
    from pressa.genai.decoder_session import DecoderSession

    s = DecoderSession(folder, threads=threads, hint="throughput", all_logits=True)
    return lambda ids: s.prefill([ids], capacity=len(ids))[1][0]


def transformers_logits(source: str) -> Logits | None:
    """The original model run by transformers (HF folder or .gguf), or None when not installed."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    p = Path(source)
    kw = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    model = AutoModelForCausalLM.from_pretrained(str(p.parent if kw else p), dtype=torch.float32, **kw).eval()

    def run(ids):
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].numpy()

    return run


def reference_logits(reference: str, threads: int | None = None) -> tuple[Logits, str, Iterator | None]:
    """Logits of the original model: a pressa artifact as is, else transformers if installed, else
    pressa's own fp32 artifact built into a temporary folder."""
    from pressa.artifact import ArtifactKind, kind_of

    p = Path(reference)
    if kind_of(p) == ArtifactKind.DECODER_LLM:
        return artifact_logits(p, threads), "pressa artifact", None
    from pressa.sources import open_source
    from pressa.sources.bundled import bundled_path, is_bundled_name

    if is_bundled_name(reference):
        reference = str(bundled_path(Path(reference).name))
        p = Path(reference)
    if p.exists():
        run = transformers_logits(reference)
        if run is not None:
            return run, "transformers fp32", None
    open_source(reference)         # clear errors for a bad reference before building
    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm

    tmp = temp_dir("reference-")
    build_llm(reference, Path(tmp.name) / "fp32", BuildOptions(precision="fp32"), overwrite=True)
    return artifact_logits(Path(tmp.name) / "fp32", threads), "pressa fp32 artifact", tmp


def agreement(candidate: Logits, reference: Logits, samples: list[list[int]],
              progress: Callable[[int, int, str], None] | None = None) -> dict:
    agree, kls, n = 0, [], 0
    for i, ids in enumerate(samples):
        lr, lc = log_softmax(reference(ids)), log_softmax(candidate(ids))
        agree += int((lr.argmax(-1) == lc.argmax(-1)).sum())
        kls.append((np.exp(lr) * (lr - lc)).sum(-1))
        n += len(ids)
        if progress:
            progress(i + 1, len(samples), f"sample {i + 1}/{len(samples)}")
    kl = np.concatenate(kls)
    return {"top1_agreement": agree / n, "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "positions": n, "samples": len(samples)}


def text_samples(text: str, encode: Callable[[str], list[int]], max_samples: int = 32,
                 max_tokens: int = 256, min_chars: int = 40) -> list[list[int]]:
    """Lines of a data file (headings and short lines skipped), tokenized and capped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if len(line) < min_chars or line.startswith("="):
            continue
        ids = encode(line)[:max_tokens]
        if len(ids) >= 2:
            out.append(ids)
        if len(out) >= max_samples:
            break
    return out
