"""SentencePiece GGUF tokenizers (tokenizer.ggml.model = llama) rebuilt by pressa give the token ids of the
Hugging Face tokenizer of the same SentencePiece model, and of sentencepiece itself.

The SentencePiece model is trained in the test (BPE with byte fallback, digits split, no whitespace folding:
Llama 2's settings) and written into a GGUF the way llama.cpp's converter writes a SentencePiece vocabulary."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pressa.capture.build_options import BuildOptions
from pressa.capture.llm import build_llm
from pressa.genai.tokenizer import TextTokenizer

from conftest import make_tiny
from gguf_files import write_gguf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-valid.txt"
VOCAB = 900
TEXTS = [
    "Hello world", " leading space", "trailing space ", "multiple   spaces  inside  ", "  ", "",
    "new\nlines\n\nand\ttabs\r\n", "Ünïcödé àccents: café naïve façade", "中文字符测试 and 日本語のテキスト",
    "emoji 🙂🚀👩‍👩‍👧 mixed", "byte fallback: \x07 ☃ 𝔘𝔫𝔦 ∮", "digits 1234567 and 3.14159",
    "<s>special at the start", "text <s> in the middle </s> end", "<|im_start|>user\nhi<|im_start|>",
    "The tower is 324 metres (1,063 ft) tall, about the same height as an 81-storey building.",
]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    lines = [s for s in DATA.read_text().splitlines() if s.strip()][:3000] + TEXTS
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB, model_type="bpe", byte_fallback=True,
        split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        user_defined_symbols=["<|im_start|>"], allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2)
    folder = tmp_path_factory.mktemp("spm")
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    return folder, spm.SentencePieceProcessor(model_proto=buf.getvalue())


def spm_vocab(sp):
    """llama.cpp's converter's SentencePiece vocabulary: pieces, scores and token types."""
    def write(w):
        types = []
        for i in range(sp.get_piece_size()):
            types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                         else 5 if sp.is_unused(i) else 4 if sp.id_to_piece(i) == "<|im_start|>" else 1)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
        w.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
        w.add_token_types(types)
        w.add_add_space_prefix(True)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    return write


@pytest.fixture(scope="module")
def rebuilt(spm_model, tmp_path_factory):
    """The artifact built from a tiny Llama GGUF carrying the SentencePiece vocabulary."""
    _, sp = spm_model
    tmp = tmp_path_factory.mktemp("spm-gguf")
    hf_dir = make_tiny("llama", tmp / "hf", vocab_size=VOCAB)
    write_gguf(hf_dir, tmp / "tiny.gguf", vocab=spm_vocab(sp))
    build_llm(str(tmp / "tiny.gguf"), tmp / "out", BuildOptions(precision="fp32"))
    return TextTokenizer(tmp / "out")


def test_sentencepiece_gguf_ids_equal_hugging_face(spm_model, rebuilt):
    from transformers import LlamaTokenizer

    folder, _ = spm_model
    hf = LlamaTokenizer.from_pretrained(folder, legacy=True, add_bos_token=True)   # Llama 2's settings
    for text in TEXTS:
        assert rebuilt.encode(text) == hf(text)["input_ids"], text
        assert rebuilt.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]


def test_sentencepiece_gguf_ids_equal_sentencepiece_and_round_trip(spm_model, rebuilt):
    _, sp = spm_model
    # sentencepiece reads "<s>" in text as characters, and gives text that starts with a space one more
    # space piece than the Hugging Face tokenizer does (whose ids pressa follows; the test above)
    plain = [t for t in TEXTS if "<" not in t and t[:1] not in " \n"]
    for text in plain:
        ids = rebuilt.encode(text)
        assert ids == [1] + sp.encode(text), text
        assert rebuilt.decode(ids) == sp.decode(ids[1:]) == text
    assert any(sp.is_byte(i) for t in plain for i in sp.encode(t))      # byte fallback was exercised
