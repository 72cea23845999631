"""Generation backends behind one small interface (``Engine.generate``)."""

from maft.engines.base import Engine, Generation, Message, Request, Sampling

__all__ = ["Engine", "Generation", "Message", "Request", "Sampling"]
