"""Fine-tuning mechanics.

``lora`` (LoRALinear, peft helpers, reading factors back), ``quant`` (blockwise NF4/FP4/Int4 and
double quantisation), ``bnb`` (bitsandbytes layers, fake-quantised models, footprints),
``recipes`` (full / LoRA / QLoRA fine-tuning runs), ``base`` (the pretrained base per seed).
"""
