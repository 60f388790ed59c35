"""cptlab: continued pretraining of causal language models, and finding out whether and why it helps."""

__version__ = "0.1.0"
