"""A Hugging Face Hub id: download config, safetensors and tokenizer files (or find them in the cache)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pressa.errors import SourceNotFound, first_line
from pressa.sources.base import Source
from pressa.sources.hf import open_hf_folder

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja"]      # configs, weights, tokenizer, chat template


def looks_like_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not Path(spec).exists()


def open_hub(repo_id: str, revision: str | None = None) -> Source:
    return open_hf_folder(hub_folder(repo_id, revision), kind="hub")


def hub_folder(repo_id: str, revision: str | None = None, patterns: list[str] | None = None) -> Path:
    """The local snapshot of a Hub repository (downloaded unless HF_HUB_OFFLINE), with clear errors."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise SourceNotFound(f"{repo_id!r} looks like a Hub id but huggingface_hub is not installed; "
                             "pip install huggingface_hub, or pass a local folder") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=patterns or PATTERNS,
                                 local_files_only=offline)
    except LocalEntryNotFoundError:
        raise SourceNotFound(f"{repo_id}: not in the local Hugging Face cache and the Hub cannot be reached "
                             "(offline); download it once with network access or pass a local folder") from None
    except Exception as err:  # network errors, 404, gated repos: one clear line
        msg = first_line(err)
        raise SourceNotFound(f"{repo_id}: could not download from the Hugging Face Hub ({msg}); "
                             "check the id, your network and HF_TOKEN, or pass a local folder") from None
    return Path(path)
