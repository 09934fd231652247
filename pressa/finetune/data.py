"""Training examples for `pressa finetune`: records from files or a Hugging Face dataset, rendered by a
text template, a text field or the model's chat template, tokenized with the positions the loss is
taken on.

Which tokens the loss covers: with --text_template, the text from the template's last {field} on (the
answer: "### Question: {instruction}\\n### Answer: {response}" trains on the response); with
--use_chat_template, the assistant turns; with --text_field, every token.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

from pressa.errors import BadArgument

SUFFIX_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
                  ".text": "text"}


@dataclass
class Example:
    ids: list[int]
    trained: list[bool]          # per token: the loss is taken on it
    eos_added: bool = False      # the last token is an end-of-text the template did not write

    @property
    def answer_tokens(self) -> int:
        return sum(self.trained[1:]) - int(self.eos_added and self.trained[-1])


@dataclass
class DataOptions:
    data_name: str | None = None
    data_files: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    eval_share: float = 0.05
    text_field: str | None = None
    text_template: str | None = None
    use_chat_template: bool = False
    max_seq_len: int = 1024
    max_samples: int | None = None
    seed: int = 42


def unescape(template: str) -> str:
    """`\\n` and `\\t` typed in a shell argument mean newline and tab."""
    return template.replace("\\n", "\n").replace("\\t", "\t")


def _load(opts: DataOptions, split: str):
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if opts.data_files:
            files = [f.strip() for f in opts.data_files.split(",") if f.strip()]
            for f in files:
                if not Path(f).is_file():
                    raise BadArgument(f"--data_files {f}: no such file")
                if Path(f).stat().st_size == 0:
                    raise BadArgument(f"--data_files {f}: the file is empty")
            kinds = {SUFFIX_LOADERS.get(Path(f).suffix.lower()) for f in files}
            if None in kinds or len(kinds) > 1:
                raise BadArgument("--data_files: give files of one kind: .json, .jsonl, .csv, .parquet or .txt")
            return datasets.load_dataset(kinds.pop(), data_files=files, split="train")
        return datasets.load_dataset(opts.data_name, split=split)
    except BadArgument:
        raise
    except Exception as err:         # datasets' own errors: not in the cache offline, bad JSON, no split
        from pressa.errors import first_line

        what = f"--data_files {opts.data_files}" if opts.data_files else f"--data_name {opts.data_name}"
        raise BadArgument(f"{what}: cannot be read ({first_line(err, 200)})") from None


def records(opts: DataOptions) -> tuple[list[dict], list[dict]]:
    """(train, eval) records: the eval split when named, else a held-out share of the train records."""
    if not opts.data_files and not opts.data_name:
        raise BadArgument("give the training data: --data_files FILE[,FILE] or --data_name NAME")
    train = list(_load(opts, opts.train_split))
    if opts.eval_split and not opts.data_files:
        held = list(_load(opts, opts.eval_split))
    else:
        random.Random(opts.seed).shuffle(train)
        n = max(1, round(len(train) * opts.eval_share)) if len(train) > 1 else 0
        held, train = train[:n], train[n:]
    if opts.max_samples:
        train = train[: opts.max_samples]
    if not train:
        raise BadArgument("the training data has no records")
    return train, held


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _rendered_template(template: str, rec: dict) -> tuple[str, str]:
    """(prompt, answer): the template split before its last field."""
    fields = _fields(template)
    missing = [f for f in fields if f not in rec]
    if missing:
        raise BadArgument(f"--text_template uses {{{missing[0]}}} but the data's columns are: "
                          f"{', '.join(sorted(rec))}")
    cut = template.rfind("{" + fields[-1])
    return template[:cut].format(**rec), template[cut:].format(**rec)


def _chat_turns(rec: dict) -> list[dict]:
    if isinstance(rec.get("messages"), list):
        return rec["messages"]
    if "instruction" in rec and ("response" in rec or "output" in rec):
        ask = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        return [{"role": "user", "content": ask},
                {"role": "assistant", "content": rec.get("response", rec.get("output"))}]
    raise BadArgument("--use_chat_template needs a 'messages' column or 'instruction' and 'response' columns; "
                      f"the data's columns are: {', '.join(sorted(rec))}")


def _chat_example(tok, rec: dict) -> Example:
    """The chat template over the turns; the loss on each assistant turn (its rendered tokens after the
    generation prompt that precedes it)."""
    turns = _chat_turns(rec)
    ids: list[int] = []
    trained: list[bool] = []
    for i, turn in enumerate(turns):
        upto = tok.encode(tok.apply_chat_template(turns[: i + 1], add_generation_prompt=False),
                          add_special_tokens=False)
        if turn.get("role") == "assistant":
            prompt = tok.encode(tok.apply_chat_template(turns[:i], add_generation_prompt=True),
                                add_special_tokens=False)
            start = len(prompt) if upto[: len(prompt)] == prompt else len(ids)
        else:
            start = len(upto)
        trained = trained[: len(ids)] + [False] * (min(start, len(upto)) - len(ids))
        trained += [turn.get("role") == "assistant"] * (len(upto) - len(trained))
        ids = upto
    return Example(ids, trained)


def example(tok, rec: dict, opts: DataOptions) -> Example:
    if opts.use_chat_template:
        ex = _chat_example(tok, rec)
    elif opts.text_template:
        prompt, answer = _rendered_template(unescape(opts.text_template), rec)
        enc = tok.tok.encode(prompt + answer)           # one pass: the answer is what starts after the prompt
        eos = [tok.eos_id] if tok.eos_id is not None else []
        ex = Example(list(enc.ids) + eos, [s >= len(prompt) and e > s for s, e in enc.offsets] + [True] * len(eos),
                     bool(eos))
    else:
        field = opts.text_field or "text"
        if field not in rec:
            raise BadArgument(f"--text_field {field}: the data's columns are: {', '.join(sorted(rec))}; "
                              "or give --text_template or --use_chat_template")
        ids = tok.encode(str(rec[field]))
        ex = Example(ids, [True] * len(ids))
    cut = opts.max_seq_len
    return Example(ex.ids[:cut], ex.trained[:cut], ex.eos_added and len(ex.ids) <= cut)


def examples(tok, recs: list[dict], opts: DataOptions, what: str) -> list[Example]:
    """Tokenized examples; a one-line error when none has a token to train on."""
    out = [example(tok, r, opts) for r in recs]
    out = [e for e in out if len(e.ids) > 1]
    if recs and not any(e.answer_tokens for e in out):
        raise BadArgument(f"no {what} example has answer tokens to train on (within --max_seq_len "
                          f"{opts.max_seq_len}); check that the template's last field holds the answer")
    return out
