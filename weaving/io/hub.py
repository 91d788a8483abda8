"""The one Hugging Face Hub resolver: a local path, or a hub id fetched into (or found in) the local cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^(hf-hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a model folder needs: weights, configs and tokenizer files (not the repository's other files).
HUB_PATTERNS = ["*.safetensors", "*.json", "*.bin", "tokenizer*", "*.txt", "*.model", "*.jinja"]


def is_hub_id(text: str) -> bool:
    """Whether `text` reads as a hub id (`org/name` or `hf-hub:org/name`), not a relative path."""
    return bool(HUB_ID.match(text)) and not text.startswith((".", "/"))


def resolve_location(location: str | os.PathLike) -> Path:
    """A local path, or a Hugging Face hub id (`org/name` or `hf-hub:org/name`) fetched into the local cache.

    Offline (`HF_HUB_OFFLINE=1`) a hub id must already be in the cache. A repository with safetensors
    weights is fetched without its `.bin` copies.
    """
    path = Path(location).expanduser()
    if path.exists():
        return path
    text = str(location)
    if not is_hub_id(text):
        raise FileNotFoundError(f"{text}: no such file or folder (nor a hub id like org/name)")
    repo = text.removeprefix("hf-hub:")
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ValueError(f"{text}: a hub id needs the huggingface_hub package (pip install huggingface_hub)") from None
    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
    try:
        safetensors_only = [p for p in HUB_PATTERNS if p != "*.bin"]
        folder = Path(snapshot_download(repo, local_files_only=offline, allow_patterns=safetensors_only))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo, local_files_only=offline, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        if offline:
            raise ValueError(f"{text}: hub id not in the local cache and HF_HUB_OFFLINE is set; download it first "
                             "or give a local folder") from None
        raise ValueError(f"{text}: cannot download this hub id (no connection?)") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise ValueError(f"{text}: cannot fetch this hub id ({reason}); check the id and the connection, or "
                         "download it and pass its folder") from None
    return folder
