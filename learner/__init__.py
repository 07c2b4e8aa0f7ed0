"""The learner: RL algorithms as pure tensor functions, the training step, the learner service."""
