"""tailor: fine-tune a base LLM (full or LoRA) and serve it behind an OpenAI-compatible API."""

__version__ = "0.1.0"

from tailor.errors import TailorError  # noqa: E402

__all__ = ["TailorError", "__version__"]
