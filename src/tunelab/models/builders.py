"""Builders that turn shipped files into trainable Hugging Face checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch


def materialize_gguf(directory: Path, gguf_file: str, target: Path) -> None:
    """Dequantise a GGUF into a plain fp32 checkpoint that Trainer accepts.

    transformers loads GGUF but marks the model with a quantization_config that Trainer refuses, so
    the model is rebuilt from its config and given the dequantised weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def build_tiny_llama(tokenizer_dir: Path, target: Path, seed: int = 0) -> None:
    """A 2-layer Llama with random weights and the bundled tokenizer: seconds to train, for tests."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def build_tiny_bert(tokenizer_dir: Path, target: Path, seed: int = 0) -> None:
    """A 2-layer BERT with random weights and MiniLM's tokenizer: the encoder counterpart of tiny-random-llama."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
