"""Every pass module, imported so that their classes register themselves (see passes.base.Pass)."""

from pressa.passes import builder, capture, finetune, fp16, optimize, quantize  # noqa: F401
