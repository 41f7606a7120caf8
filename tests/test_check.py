"""check_manifest and require_clean: every kind of bad row is reported with its row, good rows never are."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from _media import sine, truncate, write_audio, write_image, write_png_header
from polymodal.data import CheckLimits, Manifest, check_manifest, format_problems, load_manifest, require_clean
from polymodal.data.check import FIXES
from polymodal.errors import ManifestError

COLUMNS = ("text", "image", "audio", "label", "split")
UNDECODABLE = "caf@@E9@@"  # replaced by the latin-1 byte b"\xe9" once the CSV is encoded

# (text, image, audio, label, split), expected problem as (kind, column) or None for a good row.
ROWS: list[tuple[tuple[str, str, str, str, str], tuple[str, str] | None]] = [
    (("a cat on a mat", "img/cat.png", "snd/cat.wav", "cat", "train"), None),
    (("", "img/dog.jpg", "", "dog", "train"), None),  # an empty cell in a multimodal row is a missing modality
    (("a dog barks", "", "snd/dog.ogg", "dog", "train"), None),
    (("only text", "", "", "cat", "train"), None),
    (("", "img/nope.png", "", "cat", "train"), ("missing_file", "image")),
    (("", "img/folder.png", "", "cat", "train"), ("unreadable_file", "image")),
    (("", "img/garbage.png", "", "cat", "train"), ("corrupt_image", "image")),
    (("", "img/truncated.png", "", "cat", "train"), ("corrupt_image", "image")),
    (("", "img/truncated.jpg", "", "cat", "train"), ("corrupt_image", "image")),
    (("", "img/bomb.png", "", "cat", "train"), ("too_many_pixels", "image")),
    (("", "", "snd/garbage.wav", "cat", "train"), ("corrupt_audio", "audio")),
    (("", "", "snd/notes.wav", "cat", "train"), ("corrupt_audio", "audio")),
    (("", "", "snd/truncated.wav", "cat", "train"), ("corrupt_audio", "audio")),
    (("", "", "snd/truncated.ogg", "cat", "train"), ("corrupt_audio", "audio")),
    (("", "", "snd/long.wav", "cat", "train"), ("audio_too_long", "audio")),
    (("   ", "img/cat.png", "", "cat", "train"), ("empty_text", "text")),
    (("", "", "", "cat", "train"), ("no_inputs", "")),
    ((UNDECODABLE, "img/cat.png", "", "cat", "train"), ("undecodable_bytes", "text")),
    (("a cat", "img/cat.png", "", "", "train"), ("missing_label", "label")),
    (("a bird", "img/cat.png", "", "bird", "test"), ("unknown_label", "label")),  # never seen in train
    (("", "../outside.png", "", "cat", "train"), ("path_escapes_root", "image")),
    (("", "img/link_out.png", "", "cat", "train"), ("path_escapes_root", "image")),
    (("", "", "snd/nope.wav", "cat", "train"), ("missing_file", "audio")),
    (("", "", "snd", "cat", "train"), ("unreadable_file", "audio")),
    (("", "img/cat.png", "", "cat", "test"), None),
    (("", "img/link_in.jpg", "", "dog", "val"), None),  # a symlink that stays inside the folder
    (("dot-dot inside", "img/../img/cat.png", "snd/../snd/cat.wav", "cat", "test"), None),
]
EXPECTED = {row: bad for row, (_, bad) in enumerate(ROWS, start=1) if bad is not None}
GOOD_ROWS = {row for row, (_, bad) in enumerate(ROWS, start=1) if bad is None}


def write_csv(path: Path, rows: list[tuple[str, ...]], columns: tuple[str, ...] = COLUMNS) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8").replace(UNDECODABLE.encode(), b"caf\xe9"))
    return path


def build_media(root: Path) -> None:
    """Every file that ROWS names, good and bad, under ``root``; ``root/../outside.png`` is outside it."""
    img, snd = root / "img", root / "snd"
    write_image(img / "cat.png")
    write_image(img / "dog.jpg", seed=1)
    (img / "folder.png").mkdir()
    (img / "garbage.png").write_bytes(np.random.default_rng(0).bytes(2048))
    truncate(write_image(root / "whole.png", size=(64, 64)), img / "truncated.png")
    truncate(write_image(root / "whole.jpg", size=(64, 64)), img / "truncated.jpg")
    write_png_header(img / "bomb.png", 20_000, 20_000)  # 400 M pixels from the header, over the default limit
    write_image(root.parent / "outside.png")
    os.symlink(root.parent / "outside.png", img / "link_out.png")
    os.symlink("dog.jpg", img / "link_in.jpg")

    write_audio(snd / "cat.wav", sine(440, 16_000, 0.5), 16_000)
    write_audio(snd / "dog.ogg", sine(440, 44_100, 0.5), 44_100)
    (snd / "garbage.wav").write_bytes(np.random.default_rng(1).bytes(4096))
    (snd / "notes.wav").write_text("this is a text file, not a recording\n")
    truncate(write_audio(root / "whole.wav", sine(440, 16_000, 1.0), 16_000, "PCM_16"), snd / "truncated.wav")
    truncate(write_audio(root / "whole.ogg", sine(440, 16_000, 1.0), 16_000), snd / "truncated.ogg")
    # 601 s, one over the default limit; 1 kHz 8-bit keeps the real file at 601 kB.
    write_audio(snd / "long.wav", np.zeros(601_000, np.float32), 1_000, "PCM_U8")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check") / "data"
    root.mkdir()
    build_media(root)
    return write_csv(root / "manifest.csv", [cells for cells, _ in ROWS])


@pytest.fixture(scope="module")
def problems(dataset):
    return check_manifest(load_manifest(dataset), progress=False)


def test_every_bad_row_is_reported_with_its_kind_row_and_column(problems):
    assert {p.row: (p.kind, p.column) for p in problems} == EXPECTED
    assert len(problems) == len(EXPECTED)  # one problem each: nothing reported twice


def test_good_rows_are_not_reported(problems):
    assert not GOOD_ROWS & {p.row for p in problems}


def test_problems_come_in_row_order_with_a_message_and_a_fix(problems):
    assert [p.row for p in problems] == sorted(p.row for p in problems)
    for p in problems:
        assert f"row {p.row}" in p.message
        assert p.fix
        if p.kind in FIXES:
            assert p.fix == FIXES[p.kind]


def only_row(manifest: Manifest, row: int) -> Manifest:
    return manifest.without_rows({e.row for e in manifest.examples if e.row != row})


def test_pixel_limit_is_the_callers_not_pillows(tmp_path):
    # 10000 x 10000 = 100 M pixels: over Pillow's own warning threshold (89 M), under the default limit (144 M),
    # so the header passes and decoding finds the pixel data missing.
    write_png_header(tmp_path / "big.png", 10_000, 10_000)
    manifest = load_manifest(write_csv(tmp_path / "m.csv", [("big.png", "x")], columns=("image", "label")))
    assert [p.kind for p in check_manifest(manifest, progress=False)] == ["corrupt_image"]
    found = check_manifest(manifest, limits=CheckLimits(max_pixels=50_000_000), progress=False)
    assert [p.kind for p in found] == ["too_many_pixels"]
    assert "100,000,000" in found[0].message


def test_audio_length_limit_is_the_callers(dataset):
    long_row = only_row(load_manifest(dataset), 15)
    assert [p.kind for p in check_manifest(long_row, progress=False)] == ["audio_too_long"]
    assert check_manifest(long_row, limits=CheckLimits(max_audio_seconds=700), progress=False) == []


def test_whitespace_text_is_empty_but_an_empty_cell_is_a_missing_modality(tmp_path):
    write_image(tmp_path / "a.png")
    multimodal = write_csv(tmp_path / "mm.csv", [("", "a.png", "x"), (" \t ", "a.png", "x"), ("", "", "x")],
                           columns=("text", "image", "label"))
    found = {p.row: (p.kind, p.column) for p in check_manifest(load_manifest(multimodal), progress=False)}
    assert found == {2: ("empty_text", "text"), 3: ("no_inputs", "")}

    text_only = write_csv(tmp_path / "t.csv", [("hello", "x"), ("  ", "x"), ("", "x")], columns=("text", "label"))
    found = {p.row: (p.kind, p.column) for p in check_manifest(load_manifest(text_only), progress=False)}
    assert found == {2: ("empty_text", "text"), 3: ("empty_text", "text")}


def test_unknown_label_against_the_train_split(tmp_path):
    rows = [("a", "cat", "train"), ("b", "dog", "train"), ("c", "cat", "test"), ("d", "Cat", "val"),
            ("e", "bird", "test"), ("f", "dog", "")]
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows, columns=("text", "label", "split")))
    found = {p.row: p.kind for p in check_manifest(manifest, progress=False)}
    assert found == {4: "unknown_label", 5: "unknown_label", 6: "missing_split"}  # labels are case sensitive


def test_unknown_label_against_explicit_labels(tmp_path):
    rows = [("a", "cat", "train"), ("b", "dog", "train"), ("c", "cat", "test"), ("d", " cat ", "test")]
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows, columns=("text", "label", "split")))
    found = check_manifest(manifest, labels=["cat"], progress=False)
    assert [(p.row, p.kind) for p in found] == [(2, "unknown_label")]  # a train row is checked too
    assert "'dog'" in found[0].message and "cat" in found[0].message


def test_any_label_is_allowed_without_splits_or_label_list(tmp_path):
    rows = [("a", "cat"), ("b", "dog"), ("c", "7")]
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows, columns=("text", "label")))
    assert check_manifest(manifest, progress=False) == []


def test_malformed_jsonl_lines_are_problems_not_crashes(tmp_path):
    write_image(tmp_path / "a.png")
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps({"text": "good", "image": "a.png", "label": "x"}).encode(),
        b'{"text": "cut off", "label": ',
        b"[1, 2, 3]",
        b'{"text": "caf\xe9", "label": "x"}',
        b"",  # blank lines are not rows
        json.dumps({"text": "also good", "label": "x", "speaker": "ann"}).encode(),
        b'{"text": "missing image", "image": "nope.png", "label": "x"}',
    ]) + b"\n")
    manifest = load_manifest(path)
    assert len(manifest.examples) == 6
    assert {p.row: p.kind for p in manifest.parse_problems} == {2: "bad_json", 3: "bad_json", 4: "undecodable_bytes"}
    assert "line 2" in manifest.parse_problems[0].message and "line 4" in manifest.parse_problems[2].message
    found = {p.row: p.kind for p in check_manifest(manifest, progress=False)}
    assert found == {2: "bad_json", 3: "bad_json", 4: "undecodable_bytes", 6: "missing_file"}
    assert manifest.examples[4].meta == {"speaker": "ann"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_written_clean_manifest_reloads_without_problems(dataset, problems, suffix):
    manifest = load_manifest(dataset)
    clean = manifest.without_rows({p.row for p in problems})
    out = clean.write(dataset.parent / f"clean{suffix}")
    again = load_manifest(out)
    assert check_manifest(again, progress=False) == []
    assert len(again.examples) == len(GOOD_ROWS)
    keep = [e for e in manifest.examples if e.row in GOOD_ROWS]
    for field in ("text", "label", "split"):
        assert [e.get(field) for e in again.examples] == [e.get(field) for e in keep]
    for field in ("image", "audio"):
        assert [e.get(field) and e.get(field).resolve() for e in again.examples] == \
               [e.get(field) and e.get(field).resolve() for e in keep]


def test_written_manifest_in_a_parent_folder_keeps_media_paths_right(dataset, problems):
    clean = load_manifest(dataset).without_rows({p.row for p in problems})
    out = clean.write(dataset.parent.parent / "clean.csv")
    assert out.read_text().splitlines()[1].split(",")[1] == "data/img/cat.png"
    assert load_manifest(out).examples[0].image.resolve() == (dataset.parent / "img" / "cat.png").resolve()


@pytest.mark.parametrize("where", ["sibling", "subfolder"])
def test_writing_a_manifest_where_its_media_would_escape_is_refused(dataset, problems, tmp_path, where):
    # Its media paths would start with '../', which check_manifest refuses (path_escapes_root) on every row.
    clean = load_manifest(dataset).without_rows({p.row for p in problems})
    out = (tmp_path / "elsewhere" if where == "sibling" else dataset.parent / "cleaned") / "clean.csv"
    with pytest.raises(ManifestError, match="outside"):
        clean.write(out)
    assert not out.exists()


def test_require_clean_refuses_naming_each_bad_row(dataset):
    with pytest.raises(ManifestError) as err:
        require_clean(load_manifest(dataset), progress=False)
    message = str(err.value)
    for row, (kind, _) in EXPECTED.items():
        assert re.search(rf"^{row}\s+\S+\s+{kind}\b", message, re.MULTILINE), (row, kind)
    assert "--drop-bad" in message and "skip_bad" in message


def test_require_clean_with_skip_bad_keeps_only_good_rows(dataset, caplog):
    manifest = load_manifest(dataset)
    with caplog.at_level(logging.WARNING, logger="polymodal.data.check"):
        kept = require_clean(manifest, skip_bad=True, progress=False)
    assert [e.row for e in kept.examples] == sorted(GOOD_ROWS)
    assert kept.parse_problems == []
    assert f"skipped {len(EXPECTED)} bad rows of {len(ROWS)}" in caplog.text


def test_require_clean_with_skip_bad_refuses_when_nothing_is_left(tmp_path):
    manifest = load_manifest(write_csv(tmp_path / "m.csv", [("  ", "x")], columns=("text", "label")))
    with pytest.raises(ManifestError, match="nothing is left"):
        require_clean(manifest, skip_bad=True, progress=False)


def test_require_clean_passes_a_clean_manifest_through(tmp_path):
    manifest = load_manifest(write_csv(tmp_path / "m.csv", [("a", "x"), ("b", "y")], columns=("text", "label")))
    assert require_clean(manifest, progress=False) is manifest


def test_format_problems_summarises_by_kind(problems, dataset):
    table = format_problems(problems, dataset)
    summary = table.splitlines()[-1]
    assert summary.startswith(f"{dataset}: {len(EXPECTED)} problems in {len(EXPECTED)} rows (")
    counts = {kind: sum(k == kind for k, _ in EXPECTED.values()) for kind, _ in EXPECTED.values()}
    assert counts["corrupt_audio"] == 4
    for kind, n in counts.items():
        assert f"{n} {kind}" in summary
    assert format_problems([], dataset) == f"{dataset}: no problems found"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_files_without_read_permission_are_unreadable(tmp_path):
    image, audio = write_image(tmp_path / "a.png"), write_audio(tmp_path / "a.wav", sine(440, 8_000, 0.1), 8_000)
    image.chmod(0), audio.chmod(0)
    manifest = load_manifest(write_csv(tmp_path / "m.csv", [("a.png", ""), ("", "a.wav")], columns=("image", "audio")))
    found = [(p.row, p.kind, p.column) for p in check_manifest(manifest, progress=False)]
    assert found == [(1, "unreadable_file", "image"), (2, "unreadable_file", "audio")]


def test_folder_layout_is_checked_like_a_manifest(tmp_path):
    write_image(tmp_path / "cat" / "a.png")
    write_image(tmp_path / "dog" / "b.jpg")
    (tmp_path / "dog" / "c.png").write_bytes(b"not a png")
    found = check_manifest(load_manifest(tmp_path), progress=False)
    assert [(p.row, p.kind, p.column) for p in found] == [(3, "corrupt_image", "image")]


def test_media_outside_the_manifest_folder_are_refused_unless_their_folder_is_allowed(tmp_path):
    from PIL import Image

    from polymodal.cli import main
    from polymodal.data import CheckLimits, check_manifest, load_manifest
    from polymodal.train.config import config_from_dict

    lake = tmp_path / "lake"
    lake.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(lake / "a.png")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "m.csv").write_text(f"image,label\n{lake / 'a.png'},x\n")
    manifest = load_manifest(tmp_path / "m" / "m.csv")
    assert [p.kind for p in check_manifest(manifest, progress=False)] == ["path_escapes_root"]  # the default
    assert check_manifest(manifest, limits=CheckLimits(allow_roots=(str(lake),)), progress=False) == []
    cfg = config_from_dict({"data": {"manifest": "m.csv", "allow_roots": [str(lake)]},
                            "model": {"encoders": {"image": "efficientnet-lite0"}}})
    assert check_manifest(manifest, limits=cfg.data.limits(), progress=False) == []
    assert main(["data", "check", str(tmp_path / "m" / "m.csv")]) == 1
    assert main(["data", "check", str(tmp_path / "m" / "m.csv"), "--data-root", str(lake)]) == 0
