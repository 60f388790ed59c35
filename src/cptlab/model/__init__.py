"""Models: load any HF causal LM, build tiny presets sized to a tokenizer, save as an HF dir."""

from cptlab.model.io import check_vocab, load_model, load_model_and_tokenizer, save_model
from cptlab.model.presets import PRESETS, build_preset, count_parameters

__all__ = [
    "PRESETS",
    "build_preset",
    "check_vocab",
    "count_parameters",
    "load_model",
    "load_model_and_tokenizer",
    "save_model",
]
