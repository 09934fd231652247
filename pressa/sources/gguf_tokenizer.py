"""A GGUF file's tokenizer rebuilt as Hugging Face tokenizer files (tokenizer.json and its config).

Two kinds, as llama.cpp names them in tokenizer.ggml.model: "gpt2" (byte-level BPE with merges) and
"llama" (SentencePiece: pieces with scores, byte fallback; Llama 2, Mistral, Gemma, Phi-3, TinyLlama).
A SentencePiece model becomes a BPE whose merge ranks follow the merged piece's score, which is how
SentencePiece's BPE picks the next merge.
"""

from __future__ import annotations

import json

from pressa.errors import UnsupportedArchitecture

# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.ggml.pre -> pre-tokenizer of tokenizer.json
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        _byte_level(False)]}


_PRE = {
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                        _byte_level(True)]},
    "llama-bpe": _split(_LLAMA3_RE), "llama3": _split(_LLAMA3_RE),
    "qwen2": _split(_QWEN2_RE), "gpt-2": _byte_level(True), "default": _byte_level(True),
}
SPACE = "\u2581"        # SentencePiece's visible space


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _added(tokens: list[str], types: list[int], kinds: tuple[int, ...]) -> list[dict]:
    return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": ty != USER_DEFINED} for i, (t, ty) in enumerate(zip(tokens, types)) if ty in kinds]


def _byte_level_bpe(reader, tokens: list[str], types: list[int]) -> dict:
    merges = [str(m) for m in field(reader, "tokenizer.ggml.merges", [])]
    pre = _PRE.get(str(field(reader, "tokenizer.ggml.pre", "default")), _PRE["default"])
    added = [{**a, "special": True} for a in _added(tokens, types, (CONTROL, USER_DEFINED))]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


def score_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[list[str]]:
    """BPE merges that reproduce SentencePiece's choice: every split of a normal piece into two pieces of
    the vocabulary, ranked by the merged piece's score (higher first), ties by piece id then part ids."""
    ids = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (NORMAL, USER_DEFINED)}
    ranked = []
    for piece, i in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, ids[left], ids[right], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def _sentencepiece(reader, tokens: list[str], types: list[int], bos: str | None) -> dict:
    scores = [float(s) for s in field(reader, "tokenizer.ggml.scores", [0.0] * len(tokens))]
    prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", True)) and bos is not None
    unk = next((t for t, ty in zip(tokens, types) if ty == UNKNOWN), None)
    decoder = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
               {"type": "Fuse"}] + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else [])
    post = None
    if add_bos:
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [tokens.index(bos)], "tokens": [bos]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None,
        "added_tokens": _added(tokens, types, (UNKNOWN, CONTROL, USER_DEFINED)),
        # llama.cpp puts the space prefix before every run of text, also after a special token
        "pre_tokenizer": {"type": "Metaspace", "replacement": SPACE, "split": False,
                          "prepend_scheme": "always" if prefix else "never"},
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": decoder},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": score_merges(tokens, scores, types)},
    }


def tokenizer_files(reader, context_length: int) -> dict[str, bytes]:
    model = field(reader, "tokenizer.ggml.model")
    if model is None:
        return {}
    if model not in ("gpt2", "llama"):
        raise UnsupportedArchitecture(
            f"GGUF tokenizer type {model!r} cannot be rebuilt yet (byte-level BPE 'gpt2' and SentencePiece "
            "'llama' only); convert from the Hugging Face folder instead")
    tokens = [str(t) for t in field(reader, "tokenizer.ggml.tokens")]
    types = [int(t) for t in field(reader, "tokenizer.ggml.token_type", [NORMAL] * len(tokens))]

    def tok(key):
        i = field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    spm = model == "llama"
    tok_json = _sentencepiece(reader, tokens, types, tok("bos")) if spm else _byte_level_bpe(reader, tokens, types)
    specials = {k: tok(k2) for k, k2 in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                                         ("pad_token", "padding")) if tok(k2) is not None}
    tok_cfg = {
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", spm)),
        "add_eos_token": bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False, "model_max_length": context_length,
        "tokenizer_class": "LlamaTokenizer" if spm else "GPT2Tokenizer", **specials,
    }
    template = field(reader, "tokenizer.chat_template")
    if template:
        tok_cfg["chat_template"] = str(template)
    dump = lambda o: json.dumps(o, ensure_ascii=False, indent=1).encode()  # noqa: E731
    return {"tokenizer.json": dump(tok_json), "tokenizer_config.json": dump(tok_cfg),
            "special_tokens_map.json": dump(specials)}
