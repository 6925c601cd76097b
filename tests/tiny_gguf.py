"""Write a tiny Llama GGUF with random weights, so tests run a real llama-server in a second.

The weights are noise, so the text is too; what the tests need is the server around it:
streaming, usage, slots, grammars, cancellation. Two choices make that dependable:

- The model speaks only printable ASCII and a few word pieces. Byte tokens (needed to
  tokenize any prompt) would otherwise come out as broken UTF-8, and llama-server's chat
  parser answered 500 to 23 of 30 `response_format` requests. A mute token is pushed down
  by a bias: embedding dimension 0 is 1.0 for every token, which survives the small residual
  updates of random blocks, and a mute token's output row reads that dimension with weight
  `-1`, so its logit sits about 9 below the others and min-p sampling drops it.
- `</s>` is mute too, so an answer runs to `max_tokens` (or the end of its slot's context)
  rather than stopping at a random eos; a grammar that is complete still ends it, as eos
  is then the only token the grammar allows.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = ["CHAT_TEMPLATE", "WORDS", "write_tiny_llama"]

# Pieces beside the single characters: a few words, so answers show word-level tokens, and
# JSON's joints, so a grammar-constrained answer takes fewer steps.
WORDS = ("▁the", "▁hello", "▁world", "▁yes", "▁no", "▁ok", '{"', '":', '",', '"}', "▁{", "▁}")

# Renders every role the OpenAI API sends (system, user, assistant with tool calls, tool)
# and the tools offered, so /v1/chat/completions accepts any conversation shape.
CHAT_TEMPLATE = """\
{%- if tools %}<|system|>
tools: {{ tools | tojson }}
{% endif -%}
{%- for message in messages -%}
<|{{ message.role }}|>
{% if message.content is string %}{{ message.content }}{% endif -%}
{%- for call in message.tool_calls or [] -%}
<tool_call>{{ call.function | tojson }}</tool_call>
{%- endfor %}
{% endfor -%}
{%- if add_generation_prompt %}<|assistant|>
{% endif -%}"""

_UNK, _BOS, _EOS = 0, 1, 2
_MUTE_BIAS = -1.0


def _vocabulary() -> tuple[list[str], list[gguf.TokenType]]:
    """Controls, the 256 byte-fallback tokens, every printable ASCII character, the words."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    # SentencePiece writes a space as "▁".
    pieces = ["▁"] + [chr(c) for c in range(0x21, 0x7F)] + list(WORDS)
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    return tokens, types


def write_tiny_llama(
    path: str | Path,
    *,
    context: int = 8192,
    embedding: int = 128,
    blocks: int = 2,
    feed_forward: int = 256,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write the model to `path` and return it.

    `context` is the training context, which llama-server caps each slot's share of `-c`
    at. The defaults write 1.7 MB in about 25 ms; on one llama-server thread they generate
    about 1,500 tokens/s over an answer's first 1,000 tokens and 530/s over 4,000, as
    attention grows with the position: a 2,000-token answer streams for about 2 s, a
    4,000-token one for about 7 s.
    """
    path = Path(path)
    tokens, types = _vocabulary()
    rng = np.random.default_rng(seed)
    head_dim = embedding // heads

    def noise(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.02, shape).astype(np.float32)

    def ones() -> np.ndarray:
        return np.ones(embedding, np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(context)
    writer.add_embedding_length(embedding)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(_BOS)
    writer.add_eos_token_id(_EOS)
    writer.add_unk_token_id(_UNK)
    writer.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are ggml's reversed: (rows = outputs, columns = inputs).
    embed = noise(len(tokens), embedding)
    embed[:, 0] = 1.0
    output = noise(len(tokens), embedding)
    spoken = np.array([t == gguf.TokenType.NORMAL for t in types])
    output[:, 0] = np.where(spoken, 0.0, _MUTE_BIAS)
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("output_norm.weight", ones())
    writer.add_tensor("output.weight", output)
    for i in range(blocks):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones())
        writer.add_tensor(f"{block}.attn_q.weight", noise(embedding, embedding))
        writer.add_tensor(f"{block}.attn_k.weight", noise(heads * head_dim, embedding))
        writer.add_tensor(f"{block}.attn_v.weight", noise(heads * head_dim, embedding))
        writer.add_tensor(f"{block}.attn_output.weight", noise(embedding, embedding))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones())
        writer.add_tensor(f"{block}.ffn_gate.weight", noise(feed_forward, embedding))
        writer.add_tensor(f"{block}.ffn_up.weight", noise(feed_forward, embedding))
        writer.add_tensor(f"{block}.ffn_down.weight", noise(embedding, feed_forward))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
