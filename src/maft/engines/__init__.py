"""Generation backends behind one small interface (``Engine.generate``; ``Scorer.score`` for likelihoods)."""

from maft.engines.base import Engine, Generation, Message, Request, Sampling, Score, Scorer

__all__ = ["Engine", "Generation", "Message", "Request", "Sampling", "Score", "Scorer"]
