"""Turning exported rated turns into a LoRA adapter. Never imports `bot`."""
