"""`pressa finetune`: LoRA adapters trained on the CPU, in PEFT's format (pressa.finetune.train)."""
