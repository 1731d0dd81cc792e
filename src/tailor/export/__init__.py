"""Sharing a fine-tune: Hub pushes (hub.py, card.py) and GGUF / Ollama exports."""
