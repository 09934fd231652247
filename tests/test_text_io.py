"""Text in and out of the generators: output cut inside a character never ends in U+FFFD, a chat
that outgrows the context drops its oldest turns and refuses a message too long on its own (and goes
on), and a reader that closes the pipe early is no error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import run_cli


def _byte_level_tokenizer(folder):
    """One token per byte (byte-level BPE without merges), as GPT-2-style tokenizers fall back to."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from pressa.genai.tokenizer import BYTE_OF_CHAR

    vocab = {c: i for i, c in enumerate(sorted(BYTE_OF_CHAR, key=BYTE_OF_CHAR.get))}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    from pressa.genai.tokenizer import TextTokenizer

    return TextTokenizer(folder)


def test_a_cut_character_is_dropped_not_shown_as_replacement(tmp_path):
    from pressa.genai.sequence import Detokenizer

    tok = _byte_level_tokenizer(tmp_path / "tok")
    ids = tok.encode("a🎉", add_special_tokens=False)
    assert len(ids) == 5 and [tok.token_bytes(i) for i in ids] == [bytes([b]) for b in "a🎉".encode()]
    for cut in range(1, 5):                    # the generation ends after 1..4 of the emoji's bytes
        row = Detokenizer(tok, [])
        text = "".join(row.push(t) for t in ids[:cut]) + row.flush()
        assert text == "a", (cut, text)
    row = Detokenizer(tok, [])
    assert "".join(row.push(t) for t in ids) + row.flush() == "a🎉"


def test_fit_history_keeps_the_longest_suffix_that_fits(tiny_artifact):
    import pressa
    from pressa.errors import BadArgument

    m = pressa.load(tiny_artifact("llama"))
    limit = m.session.context_length
    system = [{"role": "system", "content": "t3"}]
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": " ".join(["t5"] * (20 + 10 * i))},
                  {"role": "assistant", "content": " ".join(["t6"] * 15)}]
    turns.append({"role": "user", "content": "t7 t8"})
    kept, dropped = m.fit_history(system + turns, 40)
    # the reference: among suffixes that start with a user turn, the longest whose prompt fits
    fits = [k for k in range(0, len(turns), 2)
            if len(m.encode_prompt(system + turns[k:])) + 40 <= limit]
    assert kept == system + turns[fits[0]:] and dropped == fits[0] > 0
    with pytest.raises(BadArgument, match="does not fit"):
        m.fit_history(system + [{"role": "user", "content": " ".join(["t5"] * 400)}], 40)


def _chat(artifact, lines: list[str], *options):
    return subprocess.run([sys.executable, "-m", "pressa", "chat", str(artifact), "--temperature", "0",
                           *options], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)


def test_chat_refuses_an_overlong_message_and_goes_on(tiny_artifact):
    res = _chat(tiny_artifact("llama"), [" ".join(["t5"] * 400), "t7 t8"], "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr
    assert "does not fit" in res.stderr and "Traceback" not in res.stderr
    assert len([ln for ln in res.stdout.splitlines() if ln.strip()]) == 1       # the second message's reply


def test_chat_asks_again_after_a_line_that_is_not_utf8(tiny_artifact):
    res = subprocess.run([sys.executable, "-m", "pressa", "chat", str(tiny_artifact("llama")), "--temperature", "0",
                          "--max-new-tokens", "4"], input=b"caf\xe9\nt5 t6\n", capture_output=True, timeout=300)
    err = res.stderr.decode()
    assert res.returncode == 0 and "not valid UTF-8" in err and "Traceback" not in err, err
    assert len(res.stdout.decode().splitlines()) == 1


def test_chat_drops_the_oldest_turns_when_the_context_fills(tiny_artifact):
    lines = [" ".join(["t5"] * 90) for _ in range(4)]
    res = _chat(tiny_artifact("llama"), lines, "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr
    assert "dropped the" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stdout.splitlines()) == 4


def test_generate_into_a_closed_pipe_exits_0(tiny_artifact):
    """`pressa generate ... | head -1`: the reader leaves after one line."""
    proc = subprocess.Popen([sys.executable, "-m", "pressa", "generate", str(tiny_artifact("llama")),
                             *[f"t{5 + i % 50}" for i in range(300)], "--no-chat", "--max-new-tokens", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(300) == 0 and "Traceback" not in err and "Exception" not in err, err


def test_generate_cli_output_never_ends_in_replacement_char(tiny_artifact):
    res = run_cli("generate", tiny_artifact("llama"), "t5", "--no-chat", "--max-new-tokens", "3")
    assert res.returncode == 0 and "\ufffd" not in res.stdout
