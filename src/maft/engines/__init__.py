"""Generation backends behind one small interface (``Engine.generate``; ``Scorer.score`` for likelihoods)."""

from maft.engines.base import AgentEngine, Engine, Generation, Message, Request, Sampling, Score, Scorer

__all__ = ["AgentEngine", "Engine", "Generation", "Message", "Request", "Sampling", "Score", "Scorer"]
