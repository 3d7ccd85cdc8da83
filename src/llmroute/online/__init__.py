"""Learning from outcomes online: a bandit learner on an offline router's residuals, and a
replay simulator (`llmroute simulate`)."""

from llmroute.online.learner import METHODS, Choice, OnlineLearner

__all__ = ["METHODS", "Choice", "OnlineLearner"]
