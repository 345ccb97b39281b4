"""Tutti: a conductor, browser scores, SuperCollider nodes and JackTrip links for networked laptop ensembles."""

__version__ = "0.1.0"
