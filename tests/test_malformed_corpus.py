"""Every command over the malformed-media corpus (tests/_malformed.py): no traceback, every bad row named with a fix.

Commands run in-process through ``polymodal.cli.main.main``, so an uncaught exception fails the test with its
traceback; the command's own contract is an exit status and one-line errors.
"""

from __future__ import annotations

import pytest
import yaml
from _malformed import build_corpus

from polymodal.cli.main import main
from polymodal.data import check_manifest, load_manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def encoders(tiny_model_dir):
    get = tiny_model_dir
    return {"text": str(get("bert")), "image": str(get("vit")), "audio": str(get("wav2vec2"))}


def test_data_check_names_every_bad_row_with_its_kind_and_a_fix_and_no_good_row(corpus, capsys):
    manifest, expected = corpus
    problems = check_manifest(load_manifest(manifest), progress=False)
    found: dict[int, set[str]] = {}
    for p in problems:
        found.setdefault(p.row, set()).add(p.kind)
        assert p.fix and str(p.row) in p.message, p
    assert found == {row: kinds for row, kinds in expected.items() if kinds}
    assert main(["data", "check", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert f"{len(problems)} problems in {len(found)} rows" in out


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_encode_with_skip_bad_encodes_every_good_row(corpus, encoders, modality, capsys):
    manifest, expected = corpus
    assert main(["encode", str(manifest), "--encoder", encoders[modality], "--modality", modality]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["encode", str(manifest), "--encoder", encoders[modality], "--modality", modality, "--skip-bad"]) == 0
    good = sum(not kinds for kinds in expected.values())
    assert f"{good} inputs -> features" in capsys.readouterr().out


@pytest.fixture(scope="module")
def config(corpus, encoders, tmp_path_factory):
    manifest, _ = corpus
    folder = tmp_path_factory.mktemp("train")
    cfg = folder / "cfg.yaml"
    assert main(["init", str(manifest), "--out", str(cfg)]) == 0
    d = yaml.safe_load(cfg.read_text())
    d["model"]["encoders"] = {m: {"model": ref, "modality": m} for m, ref in encoders.items()}
    d["optim"]["epochs"] = 1
    d["out_dir"] = str(folder / "run")
    cfg.write_text(yaml.safe_dump(d))
    return cfg


@pytest.fixture(scope="module")
def trained(config):
    assert main(["train", str(config), "--skip-bad"]) == 0
    return config.parent / "run"


def test_train_without_skip_bad_refuses_with_the_table_of_problems(config, corpus, capsys):
    _, expected = corpus
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--skip-bad" in err
    assert f"problems in {sum(bool(k) for k in expected.values())} rows" in err


def test_train_with_skip_bad_trains_on_the_good_rows(trained, corpus):
    import csv

    manifest, expected = corpus
    examples = load_manifest(manifest).examples
    good_test = [e for e in examples if e.split == "test" and not expected[e.row]]
    assert (trained / "metrics.json").is_file()
    with open(trained / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(good_test)  # every good test row scored, no bad one


def test_predict_answers_every_good_file_and_refuses_every_bad_one_in_one_line(trained, corpus, capsys):
    manifest, expected = corpus
    examples = load_manifest(manifest).examples
    for ex in examples:
        for path in (ex.image, ex.audio):
            if path is None or not path.exists() or path.is_dir():
                continue
            bad = bool(expected[ex.row]) and (path.name.startswith(("empty", "cut", "bomb", "strip", "text", "song",
                                                                     "nan", "inf")))
            status = main(["predict", str(trained), str(path)])
            captured = capsys.readouterr()
            assert "Traceback" not in captured.err
            if bad:
                assert status == 2 and path.name in captured.err and len(captured.err.strip().splitlines()) == 1, path
            else:
                assert status == 0, (path, captured.err)
