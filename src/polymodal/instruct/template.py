"""A conversation -> token ids through the tokenizer's own chat template, with the loss mask and soft-token slots.

Loss mask: ``labels`` equal ``input_ids`` on the content of every assistant turn *and the end-of-turn token that
closes it* (``<|im_end|>`` in ChatML), and -100 everywhere else (system, user, the template's role headers, the
newline after the end-of-turn token, soft tokens). Learning the end-of-turn token is what teaches the model to
stop; LLaMA-Factory and HF TRL's ``assistant_only_loss`` do the same.

How: the template is rendered for each prefix of the conversation; the text the template adds for assistant turn
*i* (after ``add_generation_prompt``) is that turn's span, trailing whitespace excluded. Tokens whose characters
start inside a span are in the loss.

Placeholders: ``<image>`` / ``<audio>`` are cut out of the rendered text before tokenising, and ``soft_tokens``
slot positions are put in their place; the model writes projected encoder features there (``projector.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolymodalError
from .data import PLACEHOLDERS, Conversation, Turn, find_all

IGNORE_INDEX = -100  # label of tokens outside the loss (PyTorch cross-entropy's ignore_index)


@dataclass
class Encoded:
    """One conversation as the model sees it.

    Attributes:
        input_ids: token ids; slot positions hold the pad id (their embeddings are replaced).
        labels: ``input_ids`` where the loss applies, ``IGNORE_INDEX`` elsewhere.
        slots: (modality, first position, attachment index in ``Conversation.attachments()`` order) per
            attachment; each occupies ``soft_tokens`` consecutive positions.
    """

    input_ids: list[int]
    labels: list[int]
    slots: list[tuple[str, int, int]]

    def __len__(self) -> int:
        return len(self.input_ids)


def messages(turns: tuple[Turn, ...] | list[Turn], system_prompt: str | None = None) -> list[dict[str, str]]:
    """Turns as the chat template takes them; ``system_prompt`` is added where there is no system turn."""
    out = [{"role": t.role, "content": t.content} for t in turns]
    if system_prompt is not None and (not out or out[0]["role"] != "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def _render(tokenizer, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)


def encode_conversation(tokenizer, conv: Conversation | list[Turn] | tuple[Turn, ...], *, soft_tokens: int,
                        system_prompt: str | None = None, generation_prompt: bool = False) -> Encoded:
    """Token ids, labels and soft-token slots of a conversation.

    Args:
        conv: a conversation (trained on its assistant turns) or turns ending with a user turn (to generate).
        generation_prompt: end with the template's assistant header, ready for the model to answer.

    Raises:
        PolymodalError: the tokenizer has no chat template, or its rendering is not prefix-stable.
    """
    turns = conv.turns if isinstance(conv, Conversation) else tuple(conv)
    if getattr(tokenizer, "chat_template", None) is None:
        raise PolymodalError("the language model's tokenizer has no chat template; use an instruct/chat model "
                             "(e.g. smollm2) or set tokenizer.chat_template")
    msgs = messages(turns, system_prompt)
    text = _render(tokenizer, msgs, generation_prompt)
    spans = []  # character spans of assistant turns (content + end-of-turn token)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, msgs[:i], True)
        through = _render(tokenizer, msgs[: i + 1], False).rstrip()
        if not text.startswith(before) or not text.startswith(through):
            raise PolymodalError("the tokenizer's chat template renders a conversation differently from its beginning; "
                                 "the assistant turns cannot be located for the loss mask")
        spans.append((len(before), len(through)))
    return _tokenize(tokenizer, text, spans, soft_tokens)


def _tokenize(tokenizer, text: str, spans: list[tuple[int, int]], soft_tokens: int) -> Encoded:
    marks = sorted((s, m) for m, p in PLACEHOLDERS.items() for s in find_all(text, p))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids: list[int] = []
    labels: list[int] = []
    slots: list[tuple[str, int, int]] = []
    start = 0
    pieces = [*marks, (len(text), None)]
    for n_slot, (pos, modality) in enumerate(pieces):
        segment = text[start:pos]
        if segment:
            enc = tokenizer(segment, add_special_tokens=False, return_offsets_mapping=True)
            for tok, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]):
                ids.append(tok)
                c = start + a
                labels.append(tok if any(s <= c < e for s, e in spans) else IGNORE_INDEX)
        if modality is None:
            break
        slots.append((modality, len(ids), n_slot))
        ids.extend([pad] * soft_tokens)
        labels.extend([IGNORE_INDEX] * soft_tokens)
        start = pos + len(PLACEHOLDERS[modality])
    return Encoded(ids, labels, slots)


def pack(encoded: list[Encoded], max_tokens: int) -> list[list[int]]:
    """Group conversations (by index, in order) into rows of at most ``max_tokens`` tokens (first fit).

    Packing cuts padding: short conversations share a row. Each keeps its own positions and attends only within
    itself (``block_mask``), so a packed row computes exactly what the conversations would alone.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i, e in enumerate(encoded):
        n = len(e)
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_tokens - n)
    return rows
