"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from _media import shared_data_dir

# --- data layer: the real datasets in ../shared/data ---------------------------------------------------------


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests that use it are skipped, with the reason, where it is absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} not found; set POLYMODAL_SHARED_DATA to run the shared_data tests")
    return root


# --- end of data layer block ---------------------------------------------------------------------------------

# --- models, features and CLI ---------------------------------------------------------------------------------

import os  # noqa: E402

import numpy as np  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory) -> None:
    """Every test session gets its own polymodal cache, so tests never read or pollute a user's cache."""
    os.environ["POLYMODAL_CACHE"] = str(tmp_path_factory.mktemp("polymodal-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(kind)``: a folder with a tiny random-weight HF model of that kind (bert, clip, vit, ...)."""
    from _tiny_models import BUILDERS

    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = BUILDERS[kind](tmp_path_factory.mktemp(f"tiny-{kind}"))
        return made[kind]

    return get


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
