"""Parametric passage experts (PRAG-style): augmentation, LoRA training, insertion."""
