"""Readers for document formats: HTML main content, Markdown, PDF and DOCX, each cut into titled sections.

A section is the text under one heading; its title (``"Page › Heading"``) is stored with every chunk cut from it,
shown in citations and prepended to the chunk for retrieval, while the body never repeats the heading (a heading
is the sentence most similar to a question about its section, so an extractive answerer would return it).

- HTML: trafilatura (Barbaresi 2021) extracts the main content: navigation, headers, footers, link bars and
  sidebars go; headings come back as ``<head>`` elements. Pages too short for it fall back to the visible text
  outside ``nav``/``header``/``footer``/``aside``. Images are kept only with a ``<figcaption>`` or a meaningful
  ``alt`` (more than one word, not a navigation word, not a file name) and never inside navigation or a link.
- PDF: pypdf's text layer, one section per page (citations say the page).
- DOCX: python-docx paragraphs and tables; paragraphs in ``Heading n`` / ``Title`` styles open sections.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

# alt texts that label navigation, not content (the Debian/Sphinx/DocBook icon sets among them)
_NAV_WORDS = {"prev", "previous", "next", "home", "up", "top", "back", "forward", "index", "search", "menu", "logo",
              "icon", "image", "picture", "photo", "note", "tip", "warning", "important", "caution", "link",
              "permalink", "toggle", "close", "open", "rss", "print", "share", "edit"}
# words that mark page furniture wherever they appear in an alt text ("python logo", "search icon")
_FURNITURE_WORDS = {"logo", "icon", "banner", "spacer", "button", "arrow", "bullet", "avatar", "badge"}
# class/id fragments of page furniture containers (Sphinx "related"/"sphinxsidebar", "breadcrumb", "menu", ...)
_FURNITURE_CLASS = re.compile(r"nav|menu|sidebar|related|breadcrumb|header|footer|toolbar|switcher|search", re.I)
_FILE_NAME = re.compile(r"^[\w.-]+\.(png|jpe?g|gif|svg|webp|bmp|ico)$", re.I)
_HEADING_MARKS = "¶#§ \t\n"


@dataclass
class Section:
    """Text under one heading; ``heading`` is "" for text before the first heading."""

    heading: str
    text: str
    meta: dict = field(default_factory=dict)


def meaningful_alt(alt: str) -> bool:
    """Whether an image's alt text describes it (not "Prev", "logo", "icon.png" or a single word)."""
    alt = " ".join(alt.split())
    words = re.findall(r"\w+", alt.lower())
    if len(words) < 2 or _FILE_NAME.match(alt) or _FURNITURE_WORDS & set(words):
        return False
    return not all(w in _NAV_WORDS for w in words)


def clean_heading(text: str) -> str:
    return " ".join(text.split()).strip(_HEADING_MARKS)


def join_sections(page: str, heading: str) -> str:
    """A chunk title: the page and the section heading (one of them when they are the same or one is missing)."""
    if not heading or heading == page:
        return page
    return f"{page} › {heading}" if page else heading


# --- HTML ---------------------------------------------------------------------------------------------------------

_SKIP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form")


def read_html(data: bytes) -> tuple[str, list[Section], list[tuple[str, str]]]:
    """(page title, sections of the main content, (caption, src) of the content images)."""
    import lxml.html

    tree = lxml.html.document_fromstring(data) if data.strip() else None
    if tree is None:
        return "", [], []
    title = clean_heading(tree.findtext(".//title") or "")
    sections = _trafilatura_sections(data)
    if not sections:
        sections = _visible_text_sections(tree)
    h1 = next((s.heading for s in sections if s.meta.get("level") == 1), "")
    return h1 or title, [s for s in sections if s.text.strip() or s.heading], _content_images(tree)


def _trafilatura_sections(data: bytes) -> list[Section]:
    import logging

    import trafilatura
    from lxml import etree

    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    xml = trafilatura.extract(data, output_format="xml", include_tables=True, include_images=False,
                              include_comments=False, include_links=False, favor_recall=True, deduplicate=False)
    if not xml:
        return []
    main = etree.fromstring(xml.encode("utf-8")).find("main")
    if main is None:
        return []
    sections = [Section("", "")]
    for el in main:
        text = "".join(el.itertext())
        if el.tag == "head":
            level = int((el.get("rend") or "h2").lstrip("h") or 2)
            sections.append(Section(clean_heading(text), "", {"level": level}))
        elif el.tag == "code":
            sections[-1].text += text.strip("\n") + "\n\n"
        elif el.tag == "list":
            items = [" ".join("".join(i.itertext()).split()) for i in el.iter("item")]
            sections[-1].text += "\n".join(f"- {i}" for i in items if i) + "\n\n"
        elif el.tag == "table":
            rows = [" | ".join(" ".join("".join(c.itertext()).split()) for c in row) for row in el.iter("row")]
            sections[-1].text += "\n".join(rows) + "\n\n"
        else:
            sections[-1].text += " ".join(text.split()) + "\n\n"
    return _drop_empty_lead(sections)


def _visible_text_sections(tree) -> list[Section]:
    """Fallback for pages trafilatura finds no main content in (very short ones): visible text by heading."""
    for el in [el for tag in _SKIP_TAGS for el in tree.iter(tag)]:
        if el.getparent() is not None:
            el.drop_tree()
    body = tree.find("body")
    if body is None:
        return []
    blocks = ("p", "li", "pre", "td", "th", "dd", "dt", "blockquote", "figcaption")
    sections = [Section("", "")]
    for el in body.iter():
        if not isinstance(el.tag, str) or any(a.tag in blocks for a in el.iterancestors()):
            continue
        if re.fullmatch(r"h[1-6]", el.tag):
            sections.append(Section(clean_heading(el.text_content()), "", {"level": int(el.tag[1])}))
        elif el.tag in blocks:
            text = el.text_content()
            sections[-1].text += (text.strip("\n") if el.tag == "pre" else " ".join(text.split())) + "\n\n"
    return _drop_empty_lead(sections)


def _drop_empty_lead(sections: list[Section]) -> list[Section]:
    for s in sections:
        s.text = re.sub(r"\n{3,}", "\n\n", s.text).strip()
    return sections if sections[0].text else sections[1:]


def _content_images(tree) -> list[tuple[str, str]]:
    """(caption, src) of images outside navigation and links, with a figure caption or a meaningful alt."""
    out = []
    for img in tree.iter("img"):
        ancestors = [a.tag for a in img.iterancestors() if isinstance(a.tag, str)]
        if any(tag in ancestors for tag in ("nav", "header", "footer", "aside", "a", "button")) or any(
                _FURNITURE_CLASS.search(f"{a.get('class') or ''} {a.get('id') or ''}") for a in img.iterancestors()):
            continue
        figure = next((a for a in img.iterancestors() if a.tag == "figure"), None)
        caption = ""
        if figure is not None:
            cap = figure.find(".//figcaption")
            caption = " ".join(cap.text_content().split()) if cap is not None else ""
        alt = " ".join((img.get("alt") or "").split())
        if caption or meaningful_alt(alt):
            out.append((caption or alt, img.get("src") or ""))
    return out


# --- Markdown -----------------------------------------------------------------------------------------------------

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def markdown_sections(text: str) -> tuple[str, list[Section]]:
    """(the first level-1 heading, sections split at ATX headings; body text keeps its Markdown)."""
    sections = [Section("", "")]
    pos = 0
    for m in _MD_HEADING.finditer(text):
        sections[-1].text += text[pos:m.start()]
        sections.append(Section(clean_heading(m.group(2)), "", {"level": len(m.group(1))}))
        pos = m.end()
    sections[-1].text += text[pos:]
    sections = _drop_empty_lead(sections)
    h1 = next((s.heading for s in sections if s.meta.get("level") == 1), "")
    return h1, sections


# --- PDF and DOCX -------------------------------------------------------------------------------------------------


def pdf_sections(data: bytes) -> tuple[str, list[Section]]:
    """(the PDF's title metadata, one section per page with text, ``meta["page"]`` 1-based)."""
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(io.BytesIO(data))
    title = ""
    try:
        title = clean_heading(str((reader.metadata or {}).get("/Title") or ""))
    except Exception:  # noqa: BLE001 - broken metadata must not lose the text
        pass
    sections = []
    for n, page in enumerate(reader.pages, start=1):
        text = re.sub(r"[ \t]+\n", "\n", page.extract_text() or "").strip()
        if text:
            sections.append(Section(f"page {n}", text, {"page": n}))
    return title, sections


def docx_sections(data: bytes) -> tuple[str, list[Section]]:
    """(the Title-styled paragraph or the core title, sections split at Heading-styled paragraphs; tables kept)."""
    import docx

    document = docx.Document(io.BytesIO(data))
    title = clean_heading(document.core_properties.title or "")
    sections = [Section("", "")]
    body = document.element.body
    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = docx.text.paragraph.Paragraph(child, document)
            style = (para.style.name if para.style is not None else "") or ""
            text = " ".join(para.text.split())
            if not text:
                continue
            if style == "Title":
                title = title or text
            elif style.startswith("Heading"):
                level = int(style.split()[-1]) if style.split()[-1].isdigit() else 1
                sections.append(Section(text, "", {"level": level}))
            else:
                sections[-1].text += text + "\n\n"
        elif tag == "tbl":
            table = docx.table.Table(child, document)
            rows = [" | ".join(" ".join(c.text.split()) for c in row.cells) for row in table.rows]
            sections[-1].text += "\n".join(rows) + "\n\n"
    return title, _drop_empty_lead(sections)
