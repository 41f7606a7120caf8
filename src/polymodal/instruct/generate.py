"""Answer conversations: greedy or sampled decoding with soft tokens in the prompt, batched, optionally streamed.

Prompts are embedded (soft tokens spliced in at their placeholders), left-padded so that every prompt ends at the
last position, and handed to ``transformers``' ``generate`` as ``inputs_embeds``, which keeps its KV cache,
stopping criteria and sampling (temperature, top-p).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data import Turn
from .model import InstructRun, collate
from .template import encode_conversation


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode (as whisper's ``DecodingOptions``)."""

    max_new_tokens: int = 64  # stop after this many tokens
    temperature: float = 0.0  # 0: greedy; above 0: sample at this temperature
    top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much probability
    seed: int = 0  # seed of sampling

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


def stop_token_ids(tokenizer) -> list[int]:
    """The tokens that end an answer: EOS, and the chat template's end-of-turn tokens where the vocabulary has them."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        if name in vocab:
            ids.add(vocab[name])
    return sorted(ids)


class _Streamer:
    """Feeds each new token of batch row 0 to ``on_text`` as decoded text (what ``transformers`` streamers get)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None], stops: list[int]):
        self.tokenizer, self.on_text, self.stops = tokenizer, on_text, set(stops)
        self.ids: list[int] = []
        self.shown = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt (empty with inputs_embeds)
            self.prompt_seen = True
            return
        self.ids += [t for t in value.reshape(-1).tolist()[:1] if t not in self.stops]
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self.on_text(text[self.shown:])
            self.shown = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.shown:
            self.on_text(text[self.shown:])


@dataclass(frozen=True)
class Answer:
    """One generated answer and what it cost."""

    text: str  # without special tokens, stripped
    prompt_tokens: int  # tokens of the prompt, soft tokens included
    completion_tokens: int  # tokens generated, up to (not counting) the stop token
    finish_reason: str  # "stop": a stop token ended it; "length": max_new_tokens did


def generate(run: InstructRun, prompts: list[list[Turn] | tuple[Turn, ...]], options: GenerationOptions = GenerationOptions(),
             *, on_text: Callable[[str], None] | None = None, features: list[list[torch.Tensor]] | None = None) -> list[str]:
    """Answer each prompt (turns ending with a user turn) in one batch; the texts of ``answer``."""
    return [a.text for a in answer(run, prompts, options, on_text=on_text, features=features)]


@torch.no_grad()
def answer(run: InstructRun, prompts: list[list[Turn] | tuple[Turn, ...]], options: GenerationOptions = GenerationOptions(),
           *, on_text: Callable[[str], None] | None = None, features: list[list[torch.Tensor]] | None = None) -> list[Answer]:
    """Answer each prompt (turns ending with a user turn) in one batch (static batching: the prompts are left-padded
    to the longest and decoded together until every row has stopped).

    Args:
        features: per prompt, its attachments' (soft_tokens, dim) features; default: encoded from the files.
        on_text: streaming: called with each new piece of the first prompt's answer as it is decoded.
    """
    model, tok = run.model, run.tokenizer
    encoded = [encode_conversation(tok, list(p), soft_tokens=model.soft_tokens, system_prompt=run.system_prompt,
                                   generation_prompt=True) for p in prompts]
    if features is None:
        from .data import Conversation

        features = [run.features(Conversation(0, tuple(p)).attachments()) for p in prompts]
    device = next(model.parameters()).device
    batch = collate([[(e, f)] for e, f in zip(encoded, features)], tok.pad_token_id, left=True).to(device)
    model.eval()
    embeds = model.embed(batch.input_ids, batch.attachments)
    stops = stop_token_ids(tok)
    sample = options.temperature > 0
    if sample:
        torch.manual_seed(options.seed)
    kwargs = dict(do_sample=True, temperature=options.temperature, top_p=options.top_p) if sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.lm.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask, max_new_tokens=options.max_new_tokens,
                            eos_token_id=stops, pad_token_id=tok.pad_token_id,
                            streamer=_Streamer(tok, on_text, stops) if on_text is not None else None, **kwargs)
    answers = []
    for e, row in zip(encoded, out.tolist()):
        n = next((i for i, t in enumerate(row) if t in stops), None)  # a row that stopped is padded after its stop
        ids = row if n is None else row[:n]
        answers.append(Answer(tok.decode(ids, skip_special_tokens=True).strip(), len(e), len(ids),
                              "length" if n is None else "stop"))
    return answers
