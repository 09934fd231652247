"""The decoder LLM artifact's contract, written by capture and read by genai: the graph's input and
output names (onnxruntime-genai's), and genai_config.json."""

from __future__ import annotations

from pathlib import Path

GENAI_CONFIG = "genai_config.json"
MODEL_FILE = "model.onnx"
INPUT_IDS, ATTENTION_MASK, LOGITS = "input_ids", "attention_mask", "logits"
PAST = "past_key_values.%d.%s"           # layer, key | value: the cache read
PRESENT = "present.%d.%s"                # layer, key | value: the cache written (KV in BNSH)


def past(layer: int, kv: str) -> str:
    return PAST % (layer, kv)


def present(layer: int, kv: str) -> str:
    return PRESENT % (layer, kv)


def genai_config(cfg, context: int, provider: str) -> dict:
    """genai_config.json for a decoder of config `cfg` (capture.config.DecoderConfig)."""
    eos = cfg.eos_token_id or []
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    prov = [] if provider == "cpu" else [{provider: {}}]
    return {
        "model": {
            "bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None else 0,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": prov},
                "filename": MODEL_FILE,
                "head_size": cfg.head_dim,
                "hidden_size": cfg.hidden_size,
                "inputs": {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
                           "past_key_names": PAST.replace("%s", "key"),
                           "past_value_names": PAST.replace("%s", "value")},
                "outputs": {"logits": LOGITS, "present_key_names": PRESENT.replace("%s", "key"),
                            "present_value_names": PRESENT.replace("%s", "value")},
                "num_attention_heads": cfg.num_heads,
                "num_hidden_layers": cfg.num_layers,
                "num_key_value_heads": cfg.num_kv_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": pad,
            "type": cfg.arch.genai_type,
            "vocab_size": cfg.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def read_genai_config(folder: Path) -> dict:
    from pressa.artifact.folder import read_json
    from pressa.errors import CorruptModel

    path = Path(folder) / GENAI_CONFIG
    if not path.is_file():
        raise CorruptModel(f"{folder}: no {GENAI_CONFIG}; is this a pressa LLM artifact?")
    return read_json(path)
