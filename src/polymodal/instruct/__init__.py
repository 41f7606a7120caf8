"""Instruction tuning (LLaVA-style): a causal LM tuned on conversations, images and audio as projected soft tokens.

``lm`` (load a causal LM; the bundled SmolLM2 converted once from GGUF), ``data`` (conversation JSONL, checks),
``template`` (chat template -> ids, loss mask, slots; packing), ``projector`` (features -> soft tokens, splicing),
``model`` (the model, stages, run loading), ``generate`` (decoding, streaming), ``task`` (task ``instruct`` for the
training loop), ``evaluate`` (score any model on a file's test items), ``instruction_set`` (the four-task set).
"""

from .data import Conversation, Turn, check_conversations, read_conversations
from .generate import Answer, GenerationOptions, answer, generate
from .lm import load_causal_lm
from .model import InstructModel, InstructRun, load_instruct

__all__ = ["Answer", "Conversation", "GenerationOptions", "InstructModel", "InstructRun", "Turn", "answer",
           "check_conversations", "generate", "load_causal_lm", "load_instruct", "read_conversations"]
