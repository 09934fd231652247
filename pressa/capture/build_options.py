"""The options of a decoder build (pressa.capture.decoder, capture/llm.py): what the builder reads. Their
rules and help are ModelBuilder's (pressa.passes.builder.BuilderConfig), declared there once."""

from __future__ import annotations

from dataclasses import dataclass, field

from pressa.errors import BadArgument, validation_message


@dataclass
class BuildOptions:
    precision: str = "int4"              # fp32 | fp16 | int8 | int4
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 4              # MatMulNBits compute: 0 = float, 4 = int8 activations (CPU)
    embedding_bits: int = 8              # token embedding (and a tied lm_head) in quantized precisions
    layer_bits: dict[str, int] = field(default_factory=dict)   # per-weight override (mixed precision)
    layer_groups: dict[str, int] = field(default_factory=dict)  # per-weight group size (a byte budget's)
    context_length: int | None = None
    adapter_path: str | None = None      # a PEFT LoRA adapter merged into the weights as they are read
    adapters: str | None = None          # NAME=DIR,...: adapters kept as run-time weights (capture/lora.py)
    adapter_energy: float = 0.95         # ... each at the rank holding this share of its energy (lora.compact)
    last_token_logits: bool = True       # lm_head only on each row's last token (prefill speed)
    exact_speculation: bool = False      # row-invariant attention (pressa.graph.row_invariant)
    algorithm: str = "rtn"               # rtn | awq | gptq | awq+gptq (all but rtn need calibration statistics)
    scale_search: bool = True            # per-group MSE search of scale / zero point
    scale_estimation: bool = False       # RTN/AWQ group scales refined on the calibration inputs
    act_order: bool = True               # GPTQ: columns by decreasing Hessian diagonal, static groups
    calibration_feed: str = "quantized"  # what enters each layer in layer-by-layer calibration (or "float")
    target_size_mb: float | None = None  # mixed precision at a byte budget: the model files' size ...
    bits_per_weight: float | None = None  # ... or the weights' bits per parameter (capture/mixed.py)
    budget_report: dict | None = None    # what the budget search chose (pressa.json's "budget")
    capture_inputs: bool = False         # extra outputs "calib.<key>": every linear's input (calibration)

    def validate(self) -> None:
        """The options' rules are ModelBuilder's (pressa.passes.builder.BuilderConfig), declared there once."""
        from pydantic import ValidationError

        from pressa.passes.builder import BuilderConfig

        try:
            BuilderConfig(precision=self.precision, group_size=self.block_size, symmetric=self.symmetric,
                          accuracy_level=self.accuracy_level, embedding_bits=self.embedding_bits,
                          algorithm=self.algorithm, scale_search=self.scale_search,
                          scale_estimation=self.scale_estimation, act_order=self.act_order,
                          calibration_feed=self.calibration_feed, target_size_mb=self.target_size_mb,
                          bits_per_weight=self.bits_per_weight, adapter_energy=self.adapter_energy,
                          exact_speculation=self.exact_speculation)
        except ValidationError as err:
            raise BadArgument(validation_message(err)) from None

    @property
    def uses_hessian(self) -> bool:
        """Whether quantizing needs each linear's H = X^T X from calibration."""
        return self.algorithm.endswith("gptq") or self.scale_estimation
