"""load_manifest and Manifest: CSV, JSONL, Parquet and folder layouts, and writing a manifest back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _media import sine, write_audio, write_image
from polymodal.data import check_manifest, load_manifest
from polymodal.errors import ManifestError


def test_csv_columns_paths_and_cells(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    path = tmp_path / "m.csv"
    path.write_text(
        " text , image ,label,split,speaker\n"
        "hello,img/a.png, cat , train ,ann\n"
        ",img/a.png,dog,test,bob\n"
        "  ,,cat,train,\n"
        "short row,img/a.png\n"
        "extra,img/a.png,cat,train,ann,surplus\n"
    )
    m = load_manifest(path)
    assert m.columns == ("text", "image", "label", "split", "speaker")
    assert m.modalities == ("text", "image")
    assert m.root == tmp_path.resolve()
    first, second, third, short, extra = m.examples
    assert [e.row for e in m.examples] == [1, 2, 3, 4, 5]
    assert first.text == "hello" and first.label == "cat" and first.split == "train"
    assert first.image == tmp_path.resolve() / "img" / "a.png"  # relative to the manifest, not the working folder
    assert first.meta == {"speaker": "ann"}
    assert second.text == "" and third.text == "  "  # text is kept as written; check_manifest judges it
    assert third.image is None and third.meta == {"speaker": ""}
    assert short.label is None and short.split is None
    assert extra.label == "cat" and extra.meta == {"speaker": "ann"}
    # the short row has a split column but no split: training would refuse it, so data check names it
    assert [(p.row, p.kind, p.column) for p in m.parse_problems] == [(4, "missing_split", "split")]


def test_csv_from_windows_with_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\nhello,x\r\n"two\r\nlines",y\r\n')
    m = load_manifest(path)
    assert m.columns == ("text", "label")
    assert [(e.text, e.label) for e in m.examples] == [("hello", "x"), ("two\r\nlines", "y")]


def test_csv_undecodable_bytes_spoil_one_row_and_survive_a_write(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"text,label\ncaf\xc3\xa9,x\ncaf\xe9,x\nthird,x\n")
    m = load_manifest(path)
    assert m.examples[0].text == "café" and m.examples[2].text == "third"
    [problem] = m.parse_problems
    assert (problem.row, problem.kind, problem.column) == (2, "undecodable_bytes", "text")
    assert "row 2 (line 3)" in problem.message and str(path) in problem.message and "iconv" in problem.fix
    out = m.write(tmp_path / "copy.csv")
    assert out.read_bytes() == path.read_bytes()  # written back byte for byte, not crashed on


def test_jsonl_values_and_byte_order_mark(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [{"text": "a", "label": 3, "split": "train"}, {"text": None, "label": 10, "note": {"k": 1}}]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(x) for x in lines).encode() + b"\n")
    m = load_manifest(path)
    assert [(p.row, p.kind) for p in m.parse_problems] == [(2, "missing_split")]  # training would refuse it
    assert m.columns == ("text", "label", "split", "note")
    assert [e.label for e in m.examples] == ["3", "10"]
    assert m.examples[1].text is None and m.examples[1].meta == {"note": "{'k': 1}"}


def test_parquet_manifest_with_typed_columns(tmp_path):
    write_image(tmp_path / "a.png")
    table = pa.table({"image": ["a.png", None], "label": [1, 0], "split": ["train", "train"]})
    pq.write_table(table, tmp_path / "m.parquet")
    m = load_manifest(tmp_path / "m.parquet")
    assert m.columns == ("image", "label", "split")
    assert m.examples[0].image == tmp_path.resolve() / "a.png" and m.examples[1].image is None
    assert m.labels == ["0", "1"]
    assert [(p.row, p.kind) for p in check_manifest(m, progress=False)] == [(2, "no_inputs")]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_write_then_load_round_trips(tmp_path, suffix):
    write_image(tmp_path / "img" / "a.png")
    write_audio(tmp_path / "snd" / "a.wav", sine(440, 8_000, 0.1), 8_000)
    src = tmp_path / "src.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([("text", "image", "audio", "label", "split", "speaker"),
                     ("a, \"quoted\" text", "img/a.png", "snd/a.wav", "cat", "train", "ann"),
                     ("ünïcode", "", "snd/a.wav", "dog", "test", "")])
    m = load_manifest(src)
    again = load_manifest(m.write(tmp_path / f"out{suffix}"))
    assert again.columns == m.columns
    for a, b in zip(again.examples, m.examples, strict=True):
        for name in ("text", "image", "audio", "label", "split", "meta"):
            assert getattr(a, name) == getattr(b, name), (a.row, name)


def test_write_refuses_an_unknown_format(tmp_path):
    m = load_manifest(_text_csv(tmp_path))
    with pytest.raises(ManifestError, match=r"\.txt"):
        m.write(tmp_path / "out.txt")


def _text_csv(tmp_path: Path) -> Path:
    path = tmp_path / "m.csv"
    path.write_text("text,label\nhi,x\n")
    return path


def test_labels_sort_numerically_when_all_are_integers(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("text,label\na,10\nb,2\nc,1\nd,2\n")
    assert load_manifest(path).labels == ["1", "2", "10"]
    path.write_text("text,label\na,10\nb,2\nc,cat\n")
    assert load_manifest(path).labels == ["10", "2", "cat"]


def test_split_selects_rows(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("text,label,split\na,x,train\nb,x,test\nc,x,train\n")
    assert [e.text for e in load_manifest(path).split("train")] == ["a", "c"]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("m.txt", "text\nhi\n", "unknown manifest format '.txt'"),
        ("m.csv", "path,class\na.png,cat\n", "names none of the columns.*found: path, class"),
        ("m.csv", "", "found: nothing"),
        ("m.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_unusable_manifests_raise_a_clear_error(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ManifestError, match=match):
        load_manifest(tmp_path / name)


def test_missing_manifest_raises(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "nope.csv")


def test_folder_layout(tmp_path):
    for label, name in (("cat", "b.png"), ("cat", "a.JPG"), ("dog", "c.png")):
        write_image(tmp_path / label / name)
    (tmp_path / "cat" / "notes.txt").write_text("not media")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"")
    write_image(tmp_path / ".cache" / "x.png")
    write_image(tmp_path / "loose.png")  # not in a label folder
    m = load_manifest(tmp_path)
    assert m.columns == ("image", "label") and m.modalities == ("image",)
    found = [(e.row, e.label, e.image.name) for e in m.examples]
    assert found == [(1, "cat", "a.JPG"), (2, "cat", "b.png"), (3, "dog", "c.png")]
    assert m.labels == ["cat", "dog"]
    assert check_manifest(m, progress=False) == []


def test_folder_layout_of_audio_written_as_a_manifest(tmp_path):
    write_audio(tmp_path / "yes" / "1.wav", sine(440, 8_000, 0.1), 8_000)
    write_audio(tmp_path / "no" / "2.flac", sine(440, 8_000, 0.1), 8_000)
    m = load_manifest(tmp_path)
    assert m.columns == ("audio", "label")
    out = m.write(tmp_path / "manifest.csv")
    assert out.read_text() == "audio,label\nno/2.flac,no\nyes/1.wav,yes\n"
    assert check_manifest(load_manifest(out), progress=False) == []


def test_folder_mixing_images_and_audio_is_refused(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    write_audio(tmp_path / "b" / "y.wav", sine(440, 8_000, 0.1), 8_000)
    with pytest.raises(ManifestError, match="mixes images and audio"):
        load_manifest(tmp_path)


def test_folder_without_media_is_refused(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"<root>/<label>/<file>"):
        load_manifest(tmp_path)


# --- real data from ../shared/data ---------------------------------------------------------------------------

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.shared_data
def test_cifar10_folder_layout(shared_data):
    m = load_manifest(shared_data / "images" / "cifar10-test")
    assert len(m.examples) == 10_000
    assert m.labels == CIFAR10_CLASSES
    assert all(sum(e.label == c for e in m.examples) == 1_000 for c in CIFAR10_CLASSES)
    assert {e.image.suffix for e in m.examples} == {".jpg"}


@pytest.mark.shared_data
def test_fsdd_manifest(shared_data):
    m = load_manifest(shared_data / "audio" / "fsdd" / "manifest.csv")
    assert len(m.examples) == 3_000 and m.parse_problems == []
    assert m.labels == [str(d) for d in range(10)]
    assert len(m.split("test")) == 300 and len(m.split("train")) == 2_700
    assert m.examples[0].audio.is_file() and m.examples[0].meta.keys() == {"speaker"}


def _rt_polarity_csv(shared_data: Path, dst: Path, encoding: str | None) -> tuple[Path, list[bytes]]:
    """A text,label CSV of the rt-polarity sentences' own bytes (re-encoded when ``encoding`` is given)."""
    lines: list[bytes] = []
    body = [b"text,label"]
    for label in ("pos", "neg"):
        for raw in (shared_data / "text" / "rt-polarity" / f"rt-polarity.{label}").read_bytes().splitlines():
            if encoding is not None:
                raw = raw.decode("utf-8", "replace").encode(encoding, "replace")
            lines.append(raw)
            body.append(b'"' + raw.replace(b'"', b'""') + b'",' + label.encode())
    dst.write_bytes(b"\n".join(body) + b"\n")
    return dst, lines


@pytest.mark.shared_data
@pytest.mark.parametrize("encoding", [None, "cp1252"], ids=["as-shipped", "as-latin"])
def test_rt_polarity_odd_bytes_become_problems_naming_the_row(shared_data, tmp_path, encoding):
    # The original Pang & Lee files are Windows-1252; either way every line loads, and each line that is not
    # UTF-8 is one undecodable_bytes problem naming its row and line, never a crash.
    path, lines = _rt_polarity_csv(shared_data, tmp_path / "rt.csv", encoding)
    expected_bad = set()
    for row, raw in enumerate(lines, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            expected_bad.add(row)
    m = load_manifest(path)
    assert len(m.examples) == len(lines) == 10_662
    assert {p.row for p in m.parse_problems} == expected_bad
    for p in m.parse_problems:
        assert p.kind == "undecodable_bytes" and f"row {p.row} (line {p.row + 1})" in p.message
    if encoding is not None:
        assert len(expected_bad) > 100  # the accented words and typographic dashes
    good = [e for e in m.examples if e.row not in expected_bad]
    assert all(e.text == lines[e.row - 1].decode("utf-8") for e in good)
    assert {p.row for p in check_manifest(m, progress=False)} == expected_bad
