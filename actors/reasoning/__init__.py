"""The reasoning coordinator actor and everything only it uses: the plan, the chain's run,
its stream, its storage, its prompt templates."""

from actors.reasoning.reasoner import Reasoner

__all__ = ["Reasoner"]
