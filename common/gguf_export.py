"""A Llama-family causal LM as one f16 GGUF file, the format llama.cpp, Ollama and LM Studio run.

Written the way llama.cpp's ``convert_hf_to_gguf.py`` writes a Llama: tensor names from the
``gguf`` package's own name map (``token_embd``, ``blk.N.attn_q`` ...), matrices in f16 and 1-D
tensors (norms) in f32, no ``output`` tensor when the head is tied to the embedding, and the
query/key rows permuted to llama.cpp's rotary layout (transformers undoes exactly that permutation
on load, ``LlamaTensorProcessor._reverse_permute_weights``). The tokenizer travels as metadata:
byte-level BPE (``tokenizer.ggml.model = gpt2``) tokens, types, merges, special ids and the chat
template, so one file is enough for ``from_pretrained(..., gguf_file=...)`` to rebuild both.

Only what the loader can rebuild is written; anything else (another architecture, biases, rope
scaling, a non byte-level tokenizer) is refused with :class:`GGUFUnsupported` rather than
written into a file that would load as a different model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

GGUF_ARCH = "llama"
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4  # llama.cpp's token types (gguf.TokenType)
DEFAULT_PRE = "gpt-2"  # llama.cpp's name for the GPT-2 split a plain ByteLevel pre-tokenizer does


class GGUFUnsupported(ValueError):
    """The model or tokenizer has something this writer cannot express (the reason says what)."""


def permute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: each head's rows from HF's half-split rotary order to
    interleaved pairs. ``n_head`` is the query heads for q, the key/value heads for k."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_model(model: nn.Module) -> None:
    cfg = model.config
    if cfg.model_type != "llama":
        raise GGUFUnsupported(f"GGUF export writes Llama-family models; this one is {cfg.model_type!r}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise GGUFUnsupported("GGUF export: biased attention/MLP projections are not written")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise GGUFUnsupported(f"GGUF export: rope type {rope.get('rope_type')!r} is not written")


def _rope_theta(cfg) -> float:
    rope = getattr(cfg, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def tokenizer_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id (``vocab_size`` of them: rows past the tokenizer's are ``[PADn]``, as
    llama.cpp writes them), their types (special added tokens CONTROL, other added tokens
    USER_DEFINED) and the BPE merges as ``"a b"`` strings."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = state["model"], state.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre else []
    if model.get("type") != "BPE" or not any(p.get("type") == "ByteLevel" for p in pres):
        raise GGUFUnsupported("GGUF export writes byte-level BPE tokenizers only "
                              f"(this one: {model.get('type')}, pre-tokenizer {pre.get('type')})")
    by_id = {i: t for t, i in model["vocab"].items()}
    types = {i: TOKEN_NORMAL for i in by_id}
    for added in state.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = TOKEN_CONTROL if added["special"] else TOKEN_USER_DEFINED
    if by_id and max(by_id) >= vocab_size:
        raise GGUFUnsupported(f"GGUF export: the tokenizer has id {max(by_id)}, past the model's "
                              f"{vocab_size} embedding rows")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, TOKEN_USER_DEFINED) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, token_types, merges


def write_llama_gguf(model: nn.Module, tokenizer, path: Path, pre: str = DEFAULT_PRE,
                     name: str = "") -> Path:
    """Writes ``model`` (a float ``LlamaForCausalLM``) and ``tokenizer`` to ``path`` as f16 GGUF.
    ``pre`` is llama.cpp's pre-tokenizer name (copy the source GGUF's when there is one)."""
    import gguf

    _check_model(model)
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines are a progress log
    cfg = model.config
    tokens, token_types, merges = tokenizer_vocab(tokenizer, cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads

    w = gguf.GGUFWriter(str(path), GGUF_ARCH)
    w.add_type(gguf.GGUFType.MODEL)
    if name:
        w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    for add, token_id in ((w.add_bos_token_id, tokenizer.bos_token_id), (w.add_eos_token_id, tokenizer.eos_token_id),
                          (w.add_unk_token_id, tokenizer.unk_token_id), (w.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    probe = tokenizer("a")["input_ids"]
    w.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    w.add_add_space_prefix(False)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp omits `output` for a tied head; the loader re-ties it
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gg_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gg_name is None:
            raise GGUFUnsupported(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
        t = t.detach().to(torch.float32).cpu()
        if hf_name.endswith("self_attn.q_proj.weight"):
            t = permute_rotary(t, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            t = permute_rotary(t, n_kv)
        data = t.numpy().astype(np.float16 if t.ndim > 1 else np.float32)
        w.add_tensor(gg_name, data)

    path.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def source_pre_tokenizer(gguf_path: Path) -> str | None:
    """The ``tokenizer.ggml.pre`` a source GGUF states (what its vocabulary's split is called)."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).get_field("tokenizer.ggml.pre")
    return field.contents() if field is not None else None
