"""Read knowledge-base sources into documents: text, Markdown, HTML, PDF, DOCX, SQuAD JSON, captioned images, and
gzip-compressed copies of each (``page.html.gz``).

Documents are sections: the text under one heading, titled "Page › Heading" (``formats.py``), so headings are
chunk titles, never answer text. PDF sections are pages.

Every problem with a file (broken JSON, JSON that is not SQuAD, bytes that are not UTF-8, an image that does not
decode or has no caption) becomes a ``SourceProblem`` naming the file and the fix; the other files go on, and the
build reports all problems at the end.

Images carry text: a sidecar caption ``photo.txt`` (or ``photo.jpg.txt``) next to ``photo.jpg``, the ``alt`` of an
``<img>`` in HTML, or ``![alt](path)`` in Markdown. The caption is what text retrieval sees; the pixels are embedded
too only when an aligned image encoder is configured.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PolymodalError
from .formats import join_sections
from .squad import parse_squad

TEXT_SUFFIXES = (".txt", ".text")
MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
JSON_SUFFIXES = (".json",)
PDF_SUFFIXES = (".pdf",)
DOCX_SUFFIXES = (".docx",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + HTML_SUFFIXES + JSON_SUFFIXES + PDF_SUFFIXES + DOCX_SUFFIXES
SUFFIXES = DOCUMENT_SUFFIXES + IMAGE_SUFFIXES
GZIP_SUFFIX = ".gz"  # any document type, gzip-compressed: page.html.gz, notes.txt.gz, manual.pdf.gz
_HTML_REFERENCE = re.compile(r"""<img[^>]*?\bsrc\s*=\s*["']?([^"'\s>]+)""", re.I)
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
    kind: str  # bad_json | not_squad | undecodable_text | unreadable_image | missing_caption | unreadable_file |
    # bad_gzip | bad_pdf | bad_docx
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.message}; fix: {self.fix}"


def discover(sources: list[str | Path]) -> tuple[list[Path], list[SourceProblem]]:
    """The source files under ``sources`` (files or folders, recursive), sorted; hidden files are skipped.

    A ``.txt`` next to an image of the same stem is that image's caption, not a document of its own; an image that
    a page among the sources shows (``<img src>``, ``![](...)``) is part of that page (kept or dropped by its caption
    or alt text there), not a source of its own: page furniture such as navigation icons never fails a build.
    """
    files: list[Path] = []
    problems: list[SourceProblem] = []
    for src in map(Path, sources):
        if src.is_dir():
            files.extend(p for p in sorted(src.rglob("*")) if p.is_file() and source_suffix(p) in SUFFIXES
                         and not any(part.startswith(".") for part in p.relative_to(src).parts))
        elif src.is_file():
            files.append(src)
        else:
            problems.append(SourceProblem(str(src), "unreadable_file", "does not exist", "check the path"))
    files = sorted(set(p.resolve() for p in files))
    captions = {caption for p in files if p.suffix.lower() in IMAGE_SUFFIXES for caption in _caption_paths(p)}
    shown = _images_shown_by_pages(files)
    return [p for p in files if p not in captions and p not in shown], problems


def source_suffix(path: Path) -> str:
    """The document type of a file: its suffix, or the one under ``.gz`` (``a.html.gz`` -> ``.html``)."""
    suffix = path.suffix.lower()
    if suffix == GZIP_SUFFIX:
        inner = Path(path.stem).suffix.lower()
        return inner if inner in DOCUMENT_SUFFIXES else suffix
    return suffix


def _images_shown_by_pages(files: list[Path]) -> set[Path]:
    shown: set[Path] = set()
    for page in files:
        suffix = source_suffix(page)
        if suffix not in HTML_SUFFIXES + MARKDOWN_SUFFIXES or page.suffix.lower() == GZIP_SUFFIX:
            continue
        try:
            text = page.read_text("utf-8", errors="replace")
        except OSError:
            continue
        if suffix in HTML_SUFFIXES:
            refs = _HTML_REFERENCE.findall(text)
        else:
            refs = [m.group(2) for m in _MD_IMAGE.finditer(text)]
        for ref in refs:
            if "://" not in ref and not ref.startswith("data:"):
                shown.add((page.parent / ref.split("#")[0].split("?")[0]).resolve())
    return shown


def read_source(path: Path, display: str | None = None) -> tuple[list[Document], list[SourceProblem]]:
    """The documents of one file; a problem instead where the file cannot be used."""
    name = display or str(path)
    suffix = source_suffix(path)
    try:
        if suffix in IMAGE_SUFFIXES:
            return _read_image(path, name)
        if suffix not in DOCUMENT_SUFFIXES:
            return [], [SourceProblem(name, "unreadable_file", f"unsupported file type {suffix!r}",
                                      f"give {', '.join(SUFFIXES)} files (or any of them gzip-compressed, .gz)")]
        data = _read_bytes(path, name)
        stem = Path(path.stem).stem if path.suffix.lower() == GZIP_SUFFIX else path.stem
        if suffix in PDF_SUFFIXES:
            return _read_pdf(data, stem, name), []
        if suffix in DOCX_SUFFIXES:
            return _read_docx(data, stem, name), []
        if suffix in HTML_SUFFIXES:
            return _read_html(data, path, stem, name), []
        text = _decode(data, path, name)
        if suffix in JSON_SUFFIXES:
            return _read_squad(text, name), []
        if suffix in MARKDOWN_SUFFIXES:
            return _read_markdown(text, path, stem, name), []
        return ([Document(name, text, name, title=stem)] if text.strip() else []), []
    except _Problem as p:
        return [], [p.problem]


class _Problem(Exception):
    def __init__(self, problem: SourceProblem):
        super().__init__(str(problem))
        self.problem = problem


def _read_bytes(path: Path, name: str) -> bytes:
    """The file's bytes, decompressed when it is gzip."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Problem(SourceProblem(name, "unreadable_file", str(e), "check the file's permissions")) from e
    if path.suffix.lower() != GZIP_SUFFIX:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise _Problem(SourceProblem(name, "bad_gzip", f"does not decompress ({e})",
                                     f"check it with `gzip -t {path.name}`; replace the file or give it "
                                     "uncompressed")) from e


def _read_text(path: Path, name: str) -> str:
    return _decode(_read_bytes(path, name), path, name)


def _decode(data: bytes, path: Path, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        where = "the decompressed text" if path.suffix.lower() == GZIP_SUFFIX else "the file"
        if path.suffix.lower() == GZIP_SUFFIX:
            fix = (f"decompress, convert to UTF-8 and compress again (e.g. `zcat {path.name} | iconv -f latin1 -t "
                   f"utf-8 | gzip > fixed.gz`)")
        else:
            fix = "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        raise _Problem(SourceProblem(name, "undecodable_text", f"byte 0x{data[e.start]:02x} at line {line} of "
                                     f"{where} is not UTF-8", fix)) from e


def _section_documents(name: str, page: str, sections) -> list[Document]:
    """One document per section: the first keeps the file's name as id, the others ``name#s<i>``."""
    docs = []
    for i, sec in enumerate(s for s in sections if s.text.strip()):
        doc_id = name if i == 0 else f"{name}#s{i}"
        meta = dict(sec.meta)
        if sec.heading:
            meta["section"] = sec.heading
        docs.append(Document(doc_id, sec.text, name, title=join_sections(page, sec.heading), meta=meta))
    return docs


def _read_pdf(data: bytes, stem: str, name: str) -> list[Document]:
    from .formats import pdf_sections

    try:
        title, pages = pdf_sections(data)
    except Exception as e:  # noqa: BLE001 - pypdf raises many types for damaged files
        raise _Problem(SourceProblem(name, "bad_pdf", f"does not open as a PDF ({type(e).__name__}: {e})",
                                     "replace the file, or print it to PDF again")) from e
    if not pages:
        raise _Problem(SourceProblem(name, "bad_pdf", "has no text layer (a scan?)",
                                     "run OCR on it first (e.g. `ocrmypdf IN.pdf OUT.pdf`)"))
    page_title = title or stem
    return [Document(f"{name}#page{s.meta['page']}", s.text, name, title=f"{page_title}, page {s.meta['page']}",
                     meta=dict(s.meta)) for s in pages]


def _read_docx(data: bytes, stem: str, name: str) -> list[Document]:
    from .formats import docx_sections

    try:
        title, sections = docx_sections(data)
    except Exception as e:  # noqa: BLE001 - python-docx raises zip and XML errors for damaged files
        raise _Problem(SourceProblem(name, "bad_docx", f"does not open as a Word document ({type(e).__name__}: "
                                     f"{e})", "save it again as .docx (old .doc files must be converted)")) from e
    return _section_documents(name, title or stem, sections)


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


def _read_markdown(text: str, path: Path, stem: str, name: str) -> list[Document]:
    from .formats import markdown_sections, meaningful_alt

    h1, sections = markdown_sections(_MD_IMAGE.sub("", text))
    docs = _section_documents(name, h1 or stem, sections)
    for i, m in enumerate(m for m in _MD_IMAGE.finditer(text) if meaningful_alt(m.group(1))):
        docs.append(_image_document(name, i, " ".join(m.group(1).split()), m.group(2), path))
    return docs


def _read_html(data: bytes, path: Path, stem: str, name: str) -> list[Document]:
    from .formats import read_html

    try:
        title, sections, images = read_html(data)
    except Exception as e:  # noqa: BLE001 - lxml raises parser errors of several types on broken markup
        raise _Problem(SourceProblem(name, "unreadable_file", f"does not parse as HTML ({type(e).__name__}: {e})",
                                     "check that the file is a web page (open it in a browser)")) from e
    docs = _section_documents(name, title or stem, sections)
    for i, (caption, src) in enumerate(images):
        docs.append(_image_document(name, i, caption, src, path))
    return docs


def _image_document(name: str, i: int, caption: str, src: str, page: Path) -> Document:
    local = page.parent / src
    image = str(local.resolve()) if "://" not in src and local.is_file() else src
    return Document(f"{name}#img{i}", caption, name, kind="image", title=caption, image=image)


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
