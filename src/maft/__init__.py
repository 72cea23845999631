"""maft: multiagent finetuning of language models (Subramaniam et al., ICLR 2025)."""

__version__ = "0.1.0"
