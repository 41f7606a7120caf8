"""Instruction data: JSONL conversations, read without stopping at the first error, and checked line by line.

One conversation per line::

    {"messages": [{"role": "system", "content": "Answer with one word."},
                  {"role": "user", "content": "<image>\\nWhat is in this photo?", "image": "img/cat.jpg"},
                  {"role": "assistant", "content": "cat"}],
     "split": "train", "task": "cifar10"}

A user turn attaches files with ``image`` / ``audio`` (a path or a list of paths, relative to the file's folder)
and marks where each goes with one ``<image>`` / ``<audio>`` placeholder per file, in order. ``split``
(train / val / test) and ``task`` (a name for per-task scores) are optional. Turns go system (optional, first),
then user and assistant alternately, ending with an assistant answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.manifest import Problem, inside_root
from ..errors import MediaError

PLACEHOLDERS = {"image": "<image>", "audio": "<audio>"}
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "val", "test")

FIXES = {
    "bad_json": "make the line one JSON object: {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}",
    "no_messages": "give the line a non-empty \"messages\" list of {\"role\", \"content\"} turns",
    "bad_turn": "write each turn as {\"role\": \"system\" | \"user\" | \"assistant\", \"content\": \"...\"}",
    "bad_role": "use the roles system, user and assistant (ShareGPT's human/gpt must be renamed)",
    "system_not_first": "put the system turn first, or merge it into the first user turn",
    "roles_not_alternating": "alternate user and assistant turns (after an optional system turn), starting with user",
    "no_answer": "end the conversation with an assistant turn: the answer to learn",
    "empty_answer": "write the assistant's answer, or remove the conversation",
    "empty_question": "write the user's message (a placeholder alone is fine when a file is attached)",
    "placeholder_mismatch": "put exactly one <image> (or <audio>) in the text for each attached file, where it belongs",
    "attachment_not_user": "attach files to user turns only",
    "bad_attachment": "give a path (or a list of paths) relative to the JSONL file's folder",
    "missing_file": "correct the path (relative to the JSONL file's folder) or remove the conversation",
    "path_escapes_root": "keep media inside the JSONL file's folder and use a relative path without '..'",
    "corrupt_image": "re-export the image (PNG or JPEG) or remove the conversation",
    "corrupt_audio": "re-export the audio as wav, flac or ogg, or remove the conversation",
    "unreadable_file": "fix the file's permissions, or point at a file rather than a folder",
    "too_many_pixels": "downscale the image",
    "audio_too_long": "cut the audio into shorter clips",
    "unsupported_modality": "add an encoder for this modality under model.encoders, or drop the attachment",
    "too_long": "shorten the conversation, split it into several, or raise instruct.max_tokens",
    "bad_split": "use split train, val or test (or leave it out)",
}


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    content: str  # text, with one placeholder per attached file
    images: tuple[Path, ...] = ()  # attached image files, in placeholder order
    audios: tuple[Path, ...] = ()  # attached audio files, in placeholder order

    def attachments(self, modality: str) -> tuple[Path, ...]:
        return self.images if modality == "image" else self.audios


@dataclass(frozen=True)
class Conversation:
    line: int  # 1-based line in the JSONL file
    turns: tuple[Turn, ...]
    split: str | None = None
    task: str | None = None  # a name for per-task scores, e.g. "cifar10"
    meta: dict = field(default_factory=dict, compare=False)  # any other keys of the line

    def attachments(self) -> list[tuple[str, Path]]:
        """(modality, file) of every attachment, in the order their placeholders appear."""
        return [a for turn in self.turns for a in _ordered_attachments(turn)]

    @property
    def answer(self) -> str:
        """The last assistant turn: the reference answer when scoring."""
        return next((t.content for t in reversed(self.turns) if t.role == "assistant"), "")

    @property
    def prompt_turns(self) -> tuple[Turn, ...]:
        """Every turn before the last assistant answer: what a model is given to answer."""
        last = max((i for i, t in enumerate(self.turns) if t.role == "assistant"), default=len(self.turns))
        return self.turns[:last]


def _ordered_attachments(turn: Turn) -> list[tuple[str, Path]]:
    """A turn's attachments in the order their placeholders appear in its text."""
    found = sorted((turn.content.find(PLACEHOLDERS[m], start), m) for m in PLACEHOLDERS
                   for start in find_all(turn.content, PLACEHOLDERS[m]))
    counters = {"image": 0, "audio": 0}
    out = []
    for _, modality in found:
        files = turn.attachments(modality)
        if counters[modality] < len(files):
            out.append((modality, files[counters[modality]]))
        counters[modality] += 1
    return out


def find_all(text: str, needle: str) -> list[int]:
    """Start offsets of every non-overlapping occurrence of ``needle`` in ``text``."""
    out, i = [], text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + len(needle))
    return out


def is_conversation_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSONL file of conversations (its first JSON line has a ``messages`` key)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "messages" in first
    return False


def read_conversations(path: str | os.PathLike) -> tuple[list[Conversation], list[Problem]]:
    """Every well-formed conversation of a JSONL file, and the problems of the lines that are not.

    A conversation is returned when its line parses into turns, even if ``check_conversations`` will find
    problems in it (placeholder counts, roles, files), so that all problems are reported at once.
    """
    path = Path(path)
    root = path.parent
    conversations, problems = [], []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                problems.append(_problem(line_no, "bad_json", "", f"line {line_no}: not valid JSON ({e})"))
                continue
            conv = _conversation(line_no, rec, root, problems)
            if conv is not None:
                conversations.append(conv)
    return conversations, problems


def _conversation(line: int, rec: object, root: Path, problems: list[Problem]) -> Conversation | None:
    if not isinstance(rec, dict):
        problems.append(_problem(line, "bad_json", "", f"line {line}: a JSON {type(rec).__name__}, not an object"))
        return None
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append(_problem(line, "no_messages", "messages", f"line {line}: no \"messages\" list (or it is empty)"))
        return None
    turns = []
    for i, m in enumerate(messages, start=1):
        where = f"turn {i}"
        if not isinstance(m, dict) or not isinstance(m.get("content", ""), str) or "role" not in m:
            problems.append(_problem(line, "bad_turn", where, f"line {line}, {where}: not a {{\"role\", \"content\"}} object"))
            return None
        files = {}
        for modality in PLACEHOLDERS:
            value = m.get(modality, m.get(modality + "s"))
            if value is None:
                files[modality] = ()
            elif isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                files[modality] = tuple(root / v for v in ([value] if isinstance(value, str) else value))
            else:
                problems.append(_problem(line, "bad_attachment", where, f"line {line}, {where}: {modality} is "
                                         f"{type(value).__name__}, not a path or a list of paths"))
                return None
        turns.append(Turn(str(m["role"]), m.get("content") or "", files["image"], files["audio"]))
    split = rec.get("split")
    meta = {k: v for k, v in rec.items() if k not in ("messages", "split", "task")}
    return Conversation(line, tuple(turns), None if split in (None, "") else str(split),
                        None if rec.get("task") in (None, "") else str(rec["task"]), meta)


def _problem(line: int, kind: str, column: str, message: str) -> Problem:
    return Problem(line, kind, column, message, FIXES[kind])


def check_conversations(
    conversations: list[Conversation],
    root: Path,
    *,
    count_tokens: Callable[[Conversation], int] | None = None,
    max_tokens: int | None = None,
    modalities: tuple[str, ...] | None = None,
    media: bool = True,
) -> list[Problem]:
    """Every problem of every conversation, in line order (``Problem.row`` is the line).

    Args:
        root: the JSONL file's folder; attachments must stay inside it.
        count_tokens: tokens of a conversation as the model sees it (chat template and soft tokens included);
            with ``max_tokens``, longer conversations are reported with their count.
        modalities: the modalities the model can take (its encoders); None: any.
        media: decode every attached file once (corrupt, truncated, too large).
    """
    problems: list[Problem] = []
    for conv in conversations:
        found = _check_structure(conv, modalities)
        if media:
            found += _check_media(conv, root)
        if count_tokens is not None and max_tokens is not None and not any(p.kind in ("bad_role", "roles_not_alternating")
                                                                           for p in found):
            n = count_tokens(conv)
            if n > max_tokens:
                found.append(_problem(conv.line, "too_long", "messages",
                                      f"line {conv.line}: {n} tokens after the chat template, over the limit of {max_tokens}"))
        problems.extend(found)
    problems.sort(key=lambda p: p.row)
    return problems


def _check_structure(conv: Conversation, modalities: tuple[str, ...] | None) -> list[Problem]:
    out: list[Problem] = []
    line = conv.line
    if conv.split is not None and conv.split not in SPLITS:
        out.append(_problem(line, "bad_split", "split", f"line {line}: split {conv.split!r} is not train, val or test"))
    expected = "user"
    for i, turn in enumerate(conv.turns, start=1):
        where = f"turn {i}"
        if turn.role not in ROLES:
            out.append(_problem(line, "bad_role", where, f"line {line}, {where}: role {turn.role!r} is not system, user or assistant"))
            return out
        if turn.role == "system":
            if i != 1:
                out.append(_problem(line, "system_not_first", where, f"line {line}, {where}: a system turn after the first turn"))
            continue
        if turn.role != expected:
            out.append(_problem(line, "roles_not_alternating", where,
                                f"line {line}, {where}: {turn.role} where an {expected} turn was expected" if expected == "assistant"
                                else f"line {line}, {where}: {turn.role} where a {expected} turn was expected"))
            return out
        expected = "assistant" if turn.role == "user" else "user"
        if turn.role == "assistant" and not turn.content.strip():
            out.append(_problem(line, "empty_answer", where, f"line {line}, {where}: the assistant's answer is empty"))
        for modality, placeholder in PLACEHOLDERS.items():
            files = turn.attachments(modality)
            marks = turn.content.count(placeholder)
            if files and turn.role != "user":
                out.append(_problem(line, "attachment_not_user", where,
                                    f"line {line}, {where}: a {turn.role} turn attaches {len(files)} {modality} file(s)"))
            elif marks != len(files):
                out.append(_problem(line, "placeholder_mismatch", where,
                                    f"line {line}, {where}: {marks} {placeholder} placeholder(s) but {len(files)} "
                                    f"{modality} file(s) attached"))
            if files and modalities is not None and modality not in modalities:
                out.append(_problem(line, "unsupported_modality", where,
                                    f"line {line}, {where}: attaches {modality}, but the model has no {modality} encoder"))
        if turn.role == "user" and not turn.content.strip():
            out.append(_problem(line, "empty_question", where, f"line {line}, {where}: the user's message is empty"))
    if expected != "user":  # the last non-system turn was a user turn, or there was none
        out.append(_problem(line, "no_answer", "messages", f"line {line}: the conversation does not end with an assistant answer"))
    return out


def _check_media(conv: Conversation, root: Path) -> list[Problem]:
    from ..data.audio import load_audio
    from ..data.image import load_image

    out: list[Problem] = []
    for i, turn in enumerate(conv.turns, start=1):
        for modality in PLACEHOLDERS:
            for path in turn.attachments(modality):
                where = f"turn {i}"
                if not inside_root(path, root):
                    out.append(_problem(conv.line, "path_escapes_root", where, f"line {conv.line}, {where}: {path} is outside {root}"))
                    continue
                try:
                    load_image(path) if modality == "image" else load_audio(path, sample_rate=None)
                except MediaError as e:
                    out.append(_problem(conv.line, e.kind if e.kind in FIXES else "unreadable_file", where,
                                        f"line {conv.line}, {where}: {e}"))
    return out
