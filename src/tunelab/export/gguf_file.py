"""A Llama-architecture causal LM written as GGUF with llama.cpp's conventions, over `gguf.GGUFWriter`.

gguf ships the writer, the tensor-name map, the tokenizer's merges/special ids/chat template
(`SpecialVocab`) and the quantizers (`gguf.quants.quantize`); what it does not ship is llama.cpp's
model converter, so the ~100 lines here do that part: hyperparameter keys, the token list and types,
and the rotary permutation of the q/k projections that llama.cpp expects (transformers' GGUF reader
undoes it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import ConfigError

QUANTS = ("f32", "f16", "q8_0")
ARCHITECTURES = ("LlamaForCausalLM",)


def check_exportable(config: dict[str, Any]) -> None:
    """Refuse, before anything loads, a model this writer has no GGUF layout for."""
    found = (config.get("architectures") or ["?"])[0]
    if found not in ARCHITECTURES:
        raise ConfigError(f"gguf: no GGUF layout for {found} (supported: {', '.join(ARCHITECTURES)}); "
                          "export --format merged instead")


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for how words are split before BPE. A plain byte-level split with GPT-2's regex (the
    bundled SmolLM2 tokenizer, as transformers rebuilds it from SmolLM2's GGUF) is "gpt2"; other splits
    are written as "default" and llama.cpp may split them differently (transformers' reader ignores the key)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    plain = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    return "gpt2" if plain else "default"


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF stores q/k rows as two halves per head; llama.cpp interleaves them (its convert_hf_to_gguf.permute)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model: torch.nn.Module, tokenizer: Any, tokenizer_dir: Path, path: Path, quant: str = "f16") -> None:
    """`model` (a merged LlamaForCausalLM) and its tokenizer (saved in `tokenizer_dir`) as one GGUF file."""
    import gguf

    if quant not in QUANTS:
        raise ConfigError(f'gguf quant "{quant}": expected one of {", ".join(QUANTS)}')
    cfg = model.config
    check_exportable(cfg.to_dict())
    writer = gguf.GGUFWriter(str(path), "llama")
    _hyperparameters(writer, cfg, quant, path.stem)
    _vocabulary(writer, tokenizer, tokenizer_dir, cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in _tensors(model):
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"gguf: tensor {hf_name} has no llama.cpp name")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
            data = permute_rotary(data, heads)
        _add_tensor(writer, name, data, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _hyperparameters(writer: Any, cfg: Any, quant: str, name: str) -> None:
    import gguf

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocabulary(writer: Any, tokenizer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    """llama.cpp's gpt2 (byte-level BPE) vocabulary: every id's token and type, merges, special ids, chat template."""
    import gguf

    tokenizer_json = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if tokenizer_json.get("model", {}).get("type") != "BPE":
        raise ConfigError("gguf: only byte-level BPE tokenizers are written (llama.cpp's gpt2 model)")
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    if special.chat_template is None and tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The state dict without the tied output head (llama.cpp reuses token_embd when output.weight is absent)."""
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return list(state.items())


def _add_tensor(writer: Any, name: str, data: np.ndarray, quant: str) -> None:
    stored, raw_dtype = stored_as(data, quant)
    writer.add_tensor(name, stored, raw_dtype=raw_dtype)


def stored_as(data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """A tensor as the file stores it, and gguf's raw type for quantized bytes (None otherwise): vectors (norms)
    stay f32 as llama.cpp keeps them; matrices take the file's type."""
    import gguf

    if data.ndim == 1 or quant == "f32":
        return data.astype(np.float32), None
    if quant == "f16":
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, qtype), qtype


def rounded_like_file(model: torch.nn.Module, quant: str) -> torch.nn.Module:
    """A copy of `model` whose weights carry exactly the rounding the GGUF file type applies (through gguf's own
    quantizer and dequantizer). A file read back must compute what this copy computes: any difference is the
    writer's or the reader's, while the difference between this copy and `model` is the file type's cost.
    An f32 file rounds nothing of an f32 model: `model` itself is returned, not a copy."""
    import copy

    import gguf

    if quant == "f32" and all(t.dtype == torch.float32 for t in model.state_dict().values()):
        return model
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in rounded.state_dict().values():  # tied weights appear once per name; rounding is idempotent
            stored, raw_dtype = stored_as(tensor.detach().float().cpu().numpy(), quant)
            values = stored if raw_dtype is None else gguf.quants.dequantize(stored, raw_dtype)
            tensor.copy_(torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(tensor.shape)))
    return rounded
