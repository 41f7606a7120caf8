"""Nothing read from a run folder, a knowledge-base folder or the feature cache executes code (issue 18, items 1
and 3): a malicious pickle put in place of each file a command reads is refused with a one-line error naming the
file, and its payload never runs."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_data import write_dataset
from polymodal.errors import PolymodalError
from polymodal.tasks import load_run, train
from polymodal.train.config import config_from_dict


class _Payload:
    """Unpickling this creates the marker file: proof that the loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _evil_torch(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"optimizer": _Payload(marker), "scheduler": {}, "rng": {}}, buf)
    return buf.getvalue()


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def _assert_refused(call, marker: Path, names: str):
    with pytest.raises(PolymodalError) as err:
        call()
    message = str(err.value)
    assert names in message and "\n" not in message, message
    assert not marker.exists(), "the payload ran"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n=15)


def _config(dataset, tiny_model_dir, out):
    return config_from_dict({
        "data": {"manifest": str(dataset)},
        "model": {"encoders": {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit"))},
                  "fusion": {"kind": "early", "hidden": 8}},
        "optim": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "checkpoint_every": 1},
        "out_dir": str(out),
    })


@pytest.fixture(scope="module")
def interrupted(dataset, tiny_model_dir, tmp_path_factory):
    """A run folder with a checkpoint, interrupted after step 2 (the pristine copy; tests copy it)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"

    def crash(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(dataset, tiny_model_dir, out), progress=False, on_step=crash)
    assert (out / "checkpoint" / "state.pt").is_file()
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_a_malicious_checkpoint_state_is_refused_on_resume(interrupted, dataset, tiny_model_dir, tmp_path):
    run = _copy(interrupted, tmp_path)
    marker = tmp_path / "marker"
    (run / "checkpoint" / "state.pt").write_bytes(_evil_torch(marker))
    cfg = _config(dataset, tiny_model_dir, run)
    _assert_refused(lambda: train(cfg, resume=True, progress=False), marker, "state.pt")
    # a plain pickle (not torch's zip format) is refused the same way
    (run / "checkpoint" / "state.pt").write_bytes(_evil_pickle(marker))
    _assert_refused(lambda: train(cfg, resume=True, progress=False), marker, "state.pt")


def test_a_checkpoint_in_the_previous_format_still_resumes(interrupted, dataset, tiny_model_dir, tmp_path):
    """Checkpoints written before this change held numpy's RNG state as a pickled array; numpy's array
    constructors (data, not code) are allowed, so they still resume under weights_only=True."""
    import random

    run = _copy(interrupted, tmp_path)
    path = run / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()  # the old layout: ('MT19937', uint32 array, pos, gauss, cached)
    state["rng"]["python"] = random.getstate()
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())
    train(_config(dataset, tiny_model_dir, run), resume=True, progress=False)
    assert (run / "metrics.json").is_file()


@pytest.fixture(scope="module")
def finished(dataset, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    return train(_config(dataset, tiny_model_dir, out), progress=False)


def test_malicious_or_damaged_weights_are_refused(finished, tmp_path):
    marker = tmp_path / "marker"
    run = _copy(finished, tmp_path)
    weights = run / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(_evil_torch(marker))  # a pickle named model.safetensors
    _assert_refused(lambda: load_run(run), marker, "model.safetensors")
    weights.write_bytes(good[: len(good) // 2])  # truncated
    _assert_refused(lambda: load_run(run), marker, "model.safetensors")
    weights.write_bytes(b"")
    _assert_refused(lambda: load_run(run), marker, "model.safetensors")


def test_a_python_tag_in_a_run_config_is_refused(finished, tmp_path):
    marker = tmp_path / "marker"
    run = _copy(finished, tmp_path)
    config = run / "config.yaml"
    config.write_text(f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').write('x')\"]\n"
                      + config.read_text())
    _assert_refused(lambda: load_run(run), marker, "config.yaml")
    (run / "labels.json").write_text("[1, 2")
    config.write_text(finished.joinpath("config.yaml").read_text())
    _assert_refused(lambda: load_run(run), marker, "labels.json")


def test_the_feature_cache_never_unpickles(tmp_path):
    from polymodal.features.cache import FeatureCache

    marker = tmp_path / "marker"
    path = tmp_path / "cache.sqlite"
    with FeatureCache(path) as cache:
        cache.put({"k": {"pooled": torch.ones(3)}})
        with cache._db:  # a tampered entry: pickle bytes where safetensors bytes belong
            cache._db.execute("UPDATE features SET pooled=? WHERE key='k'", (_evil_pickle(marker),))
        assert cache.get(["k"]) == {}  # a miss: encoded again and overwritten, never unpickled
    assert not marker.exists()
    bad = tmp_path / "not-a-cache.sqlite"
    bad.write_bytes(_evil_pickle(marker) * 20)
    _assert_refused(lambda: FeatureCache(bad), marker, "not-a-cache.sqlite")


def test_knowledge_base_files_never_unpickle(tmp_path, tiny_model_dir):
    from polymodal.kb import KBConfig, KnowledgeBase, build_kb

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Visitors park in the north garage for free.")
    kb_dir = tmp_path / "kb"
    build_kb([src], kb_dir, KBConfig(encoder=str(tiny_model_dir("bert")), chunk_tokens=12, overlap_tokens=3,
                                     max_tokens=32), progress=False)
    marker = tmp_path / "marker"
    ids = next(kb_dir.rglob("chunk_ids.npy"))
    np.save(ids, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    _assert_refused(lambda: KnowledgeBase(kb_dir).retrieve("park", k=1, mode="bm25"), marker, "BM25 index")

    store = kb_dir / "kb.sqlite"
    store.write_bytes(_evil_pickle(marker) * 20)
    for extra in kb_dir.glob("kb.sqlite-*"):
        extra.unlink()
    _assert_refused(lambda: KnowledgeBase(kb_dir), marker, "kb.sqlite")

    config = next(kb_dir.glob("*.yaml"))
    config.write_text(f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').write('x')\"]\n")
    _assert_refused(lambda: KnowledgeBase(kb_dir), marker, config.name)
