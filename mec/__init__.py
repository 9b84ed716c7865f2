"""Maximum Entropy Coding: the objective, the models and resumable pretraining."""
