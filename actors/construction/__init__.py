"""The construction analyzer actor (`--actors construction`): HOAI fees computed exactly,
with the model's analysis around them."""

from actors.construction.analyzer import ConstructionAnalyzer

__all__ = ["ConstructionAnalyzer"]
