"""Bad input found on real data (issue 18, items 5-10): each is a row problem with a fix, or loads, never a crash."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from _media import write_image
from PIL import Image

from polymodal.cli.main import main
from polymodal.data import (
    CheckLimits,
    check_manifest,
    load_image,
    load_manifest,
    require_clean,
)
from polymodal.errors import ManifestError, MediaError


def _kinds(manifest) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for p in check_manifest(manifest, progress=False):
        out.setdefault(p.row, set()).add(p.kind)
    return out


def test_a_thin_strip_is_refused_from_its_header_by_load_image_and_data_check(tmp_path):
    Image.new("RGB", (100_000, 1)).save(tmp_path / "strip.png")  # 20 GB once its short side is resized to 256
    write_image(tmp_path / "ok.png")
    with pytest.raises(MediaError) as e:
        load_image(tmp_path / "strip.png")
    assert e.value.kind == "extreme_aspect_ratio" and "100000x1" in str(e.value)
    (tmp_path / "m.csv").write_text("image,label\nstrip.png,a\nok.png,b\n")
    manifest = load_manifest(tmp_path / "m.csv")
    problems = check_manifest(manifest, progress=False)
    assert [(p.row, p.kind) for p in problems] == [(1, "extreme_aspect_ratio")]
    assert "crop" in problems[0].fix
    # a genuine panorama passes when the limit is raised
    assert check_manifest(manifest, limits=CheckLimits(max_aspect_ratio=200_000), progress=False) == []


def test_transparent_pixels_are_composited_onto_white_not_the_colour_hidden_under_them(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # transparent black everywhere ...
    rgba[0, 0] = (255, 0, 0, 255)  # ... but one opaque red pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    img = load_image(tmp_path / "cutout.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((5, 5)) == (255, 255, 255)
    assert load_image(tmp_path / "cutout.png", background=(0, 128, 0)).getpixel((5, 5)) == (0, 128, 0)
    la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)


def test_a_palette_image_with_transparency_decodes_without_pillows_warning(tmp_path):
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "icon.gif", transparency=0)  # GIF: palette index 0 is transparent
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=bytes([0] + [255] * 255))  # PNG with a tRNS chunk of bytes
    (tmp_path / "icon.png").write_bytes(buf.getvalue())
    for name in ("icon.gif", "icon.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Palette images with Transparency expressed in bytes ..." flooded logs
            img = load_image(tmp_path / name)
        assert img.getpixel((3, 3)) == (255, 255, 255) and img.getpixel((0, 0)) == (0, 0, 255), name


def test_a_csv_cell_over_the_csv_modules_field_limit_loads(tmp_path):
    long_text = "word " * 60_000  # 300,000 characters: over csv's default 131,072
    (tmp_path / "m.csv").write_text(f'text,label\n"{long_text}",a\nshort,b\n')
    manifest = load_manifest(tmp_path / "m.csv")
    assert [len(e.text) for e in manifest.examples] == [len(long_text), 5]
    assert manifest.parse_problems == []
    import csv

    assert csv.field_size_limit() == 131_072  # the process-wide limit is left as it was


def test_a_deeply_nested_jsonl_line_is_bad_json_for_that_row_only(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    lines = ['{"text": "fine", "label": "a"}', '{"text": "x", "label": "b", "meta": ' + deep + "}", '{"text": "also fine", "label": "a"}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    manifest = load_manifest(tmp_path / "m.jsonl")
    assert [(p.row, p.kind) for p in manifest.parse_problems] == [(2, "bad_json")]
    assert "nested too deeply" in manifest.parse_problems[0].message
    assert [e.text for e in manifest.examples if e.text] == ["fine", "also fine"]


def test_duplicate_columns_are_named_and_cannot_be_skipped(tmp_path):
    (tmp_path / "m.csv").write_text("text,label,text\nfirst,a,second\n")
    manifest = load_manifest(tmp_path / "m.csv")
    problems = check_manifest(manifest, progress=False)
    assert [(p.row, p.kind, p.column) for p in problems] == [(0, "duplicate_column", "text")]
    assert manifest.columns == ("text", "label")
    with pytest.raises(ManifestError, match="duplicate_column"):
        require_clean(manifest, skip_bad=True, progress=False)  # no row to drop: skipping cannot fix the header
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x", "label": "y"}\n{"text": "b", "label": "x"}\n')
    jsonl = load_manifest(tmp_path / "d.jsonl")
    assert [(p.row, p.kind) for p in jsonl.parse_problems] == [(1, "bad_json")]
    assert "'label' appears more than once" in jsonl.parse_problems[0].message


def test_a_list_label_and_a_misspelt_split_are_row_problems(tmp_path):
    rows = [{"text": "a", "label": ["cat"], "split": "train"}, {"text": "b", "label": "dog", "split": "vall"},
            {"text": "c", "label": "dog", "split": "train"}, {"text": "d", "label": "dog", "split": "test"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = load_manifest(tmp_path / "m.jsonl")
    problems = {p.row: p for p in check_manifest(manifest, progress=False)}
    assert {r: p.kind for r, p in problems.items()} == {1: "bad_label", 2: "unknown_split"}
    assert "did you mean 'val'" in problems[2].fix and "'vall'" in problems[2].message
    assert "JSON list" in problems[1].message
    kept = require_clean(manifest, skip_bad=True, progress=False)
    assert [e.row for e in kept.examples] == [3, 4]


def test_train_skip_bad_flag_trains_without_the_bad_rows(tmp_path, tiny_model_dir, capsys, caplog):
    from _train_data import write_dataset

    manifest = write_dataset(tmp_path / "data", n=18, missing_text_every=0)
    with open(manifest, "a") as f:
        f.write("broken row,img/nope.png,r,train\n")
    cfg = tmp_path / "cfg.yaml"
    assert main(["init", str(manifest), "--out", str(cfg)]) == 0
    enc = [f"model.encoders.text={tiny_model_dir('bert')}", f"model.encoders.image={tiny_model_dir('vit')}",
           "optim.epochs=1", f"out_dir={tmp_path / 'run'}"]
    assert main(["train", str(cfg), *enc]) == 2  # refused, naming the row
    assert "missing_file" in capsys.readouterr().err
    with caplog.at_level("WARNING"):
        assert main(["train", str(cfg), *enc, "--skip-bad"]) == 0
    assert "skipped 1 bad rows of 19" in caplog.text


def test_train_without_a_config_file_from_a_manifest_and_its_label_column(tmp_path, tiny_model_dir, capsys):
    from _train_data import write_dataset

    manifest = write_dataset(tmp_path / "data", n=18, missing_text_every=0)
    renamed = tmp_path / "data" / "colour.csv"
    renamed.write_text(manifest.read_text().replace("text,image,label,split", "text,image,colour,split", 1))
    run = tmp_path / "run"
    assert main(["train", "--data", str(renamed), "--label", "colour", "--out-dir", str(run),
                 f"model.encoders.text={tiny_model_dir('bert')}", f"model.encoders.image={tiny_model_dir('vit')}",
                 "optim.epochs=1"]) == 0
    assert f"run written to {run}" in capsys.readouterr().out
    from polymodal import load

    model = load(run)
    assert model.label == "colour" and sorted(model.run.labels) == ["b", "g", "r"]
    assert main(["train", "--data", str(renamed), "--label", "hue"]) == 2
    assert "no column 'hue'" in capsys.readouterr().err
