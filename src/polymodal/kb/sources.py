"""Read knowledge-base sources into documents: text, Markdown, HTML, SQuAD JSON, and captioned images.

Every problem with a file (broken JSON, JSON that is not SQuAD, bytes that are not UTF-8, an image that does not
decode or has no caption) becomes a ``SourceProblem`` naming the file and the fix; the other files go on, and the
build reports all problems at the end.

Images carry text: a sidecar caption ``photo.txt`` (or ``photo.jpg.txt``) next to ``photo.jpg``, the ``alt`` of an
``<img>`` in HTML, or ``![alt](path)`` in Markdown. The caption is what text retrieval sees; the pixels are embedded
too only when an aligned image encoder is configured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from ..errors import PolymodalError
from .squad import parse_squad

TEXT_SUFFIXES = (".txt", ".text")
MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
JSON_SUFFIXES = (".json",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + HTML_SUFFIXES + JSON_SUFFIXES + IMAGE_SUFFIXES
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)[^)]*\)")


@dataclass(frozen=True)
class Document:
    """One retrievable unit of a source file, before chunking."""

    doc_id: str  # unique within the knowledge base: "<file>" or "<file>#<part>"
    text: str
    source: str  # the file it came from
    kind: str = "text"  # text | image
    title: str = ""
    image: str | None = None  # for kind "image": the picture's path (a file, or a URL found in HTML/Markdown)
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceProblem:
    """A file that could not be used (or not entirely); ``fix`` says what to do."""

    path: str
    kind: str  # bad_json | not_squad | undecodable_text | unreadable_image | missing_caption | unreadable_file
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.message}; fix: {self.fix}"


def discover(sources: list[str | Path]) -> tuple[list[Path], list[SourceProblem]]:
    """The source files under ``sources`` (files or folders, recursive), sorted; hidden files are skipped.

    A ``.txt`` next to an image of the same stem is that image's caption, not a document of its own.
    """
    files: list[Path] = []
    problems: list[SourceProblem] = []
    for src in map(Path, sources):
        if src.is_dir():
            files.extend(p for p in sorted(src.rglob("*")) if p.is_file() and p.suffix.lower() in SUFFIXES
                         and not any(part.startswith(".") for part in p.relative_to(src).parts))
        elif src.is_file():
            files.append(src)
        else:
            problems.append(SourceProblem(str(src), "unreadable_file", "does not exist", "check the path"))
    files = sorted(set(p.resolve() for p in files))
    captions = {caption for p in files if p.suffix.lower() in IMAGE_SUFFIXES for caption in _caption_paths(p)}
    return [p for p in files if p not in captions], problems


def read_source(path: Path, display: str | None = None) -> tuple[list[Document], list[SourceProblem]]:
    """The documents of one file; a problem instead where the file cannot be used."""
    name = display or str(path)
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            return _read_image(path, name)
        text = _read_text(path, name)
        if suffix in JSON_SUFFIXES:
            return _read_squad(text, name), []
        if suffix in HTML_SUFFIXES:
            return _read_html(text, path, name), []
        if suffix in MARKDOWN_SUFFIXES:
            return _read_markdown(text, path, name), []
        if suffix in TEXT_SUFFIXES:
            return [Document(name, text, name, title=path.stem)], []
        return [], [SourceProblem(name, "unreadable_file", f"unsupported file type {suffix!r}",
                                  f"give {', '.join(SUFFIXES)} files")]
    except _Problem as p:
        return [], [p.problem]


class _Problem(Exception):
    def __init__(self, problem: SourceProblem):
        super().__init__(str(problem))
        self.problem = problem


def _read_text(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Problem(SourceProblem(name, "unreadable_file", str(e), "check the file's permissions")) from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _Problem(SourceProblem(name, "undecodable_text", f"byte 0x{data[e.start]:02x} at line {line} is not "
                                     "UTF-8", "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")) from e


def _read_squad(text: str, name: str) -> list[Document]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Problem(SourceProblem(name, "bad_json", f"broken JSON at line {e.lineno}, column {e.colno} ({e.msg})",
                                     "fix the JSON (e.g. `python -m json.tool FILE`)")) from e
    try:
        paragraphs, _ = parse_squad(raw, name)
    except PolymodalError as e:
        raise _Problem(SourceProblem(name, "not_squad", str(e).removeprefix(f"{name}: "),
                                     "JSON sources must be SQuAD v1.1/v2.0 files")) from e
    return [Document(f"{name}#{p.doc_id}", p.text, name, title=p.title, meta={"paragraph": p.doc_id})
            for p in paragraphs]


def _read_markdown(text: str, path: Path, name: str) -> list[Document]:
    docs = [Document(name, text, name, title=path.stem)]
    for i, m in enumerate(_MD_IMAGE.finditer(text)):
        if m.group(1).strip():
            docs.append(_image_document(name, i, m.group(1).strip(), m.group(2), path))
    return docs


def _read_html(text: str, path: Path, name: str) -> list[Document]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    body = re.sub(r"[ \t]*\n\s*\n\s*", "\n\n", "".join(parser.parts)).strip()
    docs = [Document(name, body, name, title=parser.title.strip() or path.stem)]
    for i, (alt, src) in enumerate(parser.images):
        docs.append(_image_document(name, i, alt, src, path))
    return docs


def _image_document(name: str, i: int, caption: str, src: str, page: Path) -> Document:
    local = page.parent / src
    image = str(local.resolve()) if "://" not in src and local.is_file() else src
    return Document(f"{name}#img{i}", caption, name, kind="image", title=caption, image=image)


class _HTMLText(HTMLParser):
    """Visible text (no script/style), the title, and (alt, src) of every ``<img>`` with alt text."""

    _SKIP = {"script", "style", "noscript", "template"}
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table",
              "ul", "ol", "pre", "blockquote", "header", "footer"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.images: list[tuple[str, str]] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "img":
            a = dict(attrs)
            if (a.get("alt") or "").strip():
                self.images.append((a["alt"].strip(), a.get("src") or ""))
        if tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        if tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def _caption_paths(image: Path) -> list[Path]:
    return [image.with_suffix(".txt"), image.with_name(image.name + ".txt")]


def _read_image(path: Path, name: str) -> tuple[list[Document], list[SourceProblem]]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        return [], [SourceProblem(name, "unreadable_image", f"does not decode as an image ({e})",
                                  "replace the file or remove it from the sources")]
    for caption_path in _caption_paths(path):
        if caption_path.is_file():
            caption = _read_text(caption_path, str(caption_path)).strip()
            if caption:
                return [Document(name, caption, name, kind="image", title=path.stem, image=str(path))], []
    return [], [SourceProblem(name, "missing_caption", "an image without a caption cannot be found by text",
                              f"write its caption or alt text into {path.with_suffix('.txt').name} next to it")]
