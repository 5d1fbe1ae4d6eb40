"""Byte-level tokenizer: every UTF-8 byte is a token, plus BOS and EOS. No vocabulary file,
no unknown tokens, and any text round-trips."""

from __future__ import annotations


class ByteTokenizer:
    name = "byte"
    bos_token_id = 256
    eos_token_id = 257
    vocab_size = 258

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.bos_token_id] if add_bos else []) + ids + ([self.eos_token_id] if add_eos else [])

    def decode(self, ids) -> str:
        """Special tokens are dropped; a byte sequence cut inside a character decodes to U+FFFD."""
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def token_str(self, token_id: int) -> str:
        """A printable form of one token, for per-token tables."""
        if token_id == self.bos_token_id:
            return "<bos>"
        if token_id == self.eos_token_id:
            return "<eos>"
        if token_id == 32:
            return "␣"
        return chr(token_id) if 32 < token_id < 127 else f"<{token_id:02x}>"


def build_tokenizer(name: str) -> ByteTokenizer:
    if name != "byte":
        raise ValueError(f"unknown tokenizer {name!r}; available: byte")
    return ByteTokenizer()
