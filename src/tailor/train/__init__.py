"""Fine-tuning: one loop for full and LoRA training.

    from tailor.train import train, TrainConfig
    result = train(TrainConfig(data="train.jsonl", method="lora", out="runs/demo"))
    result.final  # runs/demo/final: a PEFT adapter folder (or a full HF model folder)
"""

from tailor.train.config import TrainConfig
from tailor.train.loop import TrainResult, train
from tailor.train.session import resume_config

__all__ = ["TrainConfig", "TrainResult", "train", "resume_config"]
