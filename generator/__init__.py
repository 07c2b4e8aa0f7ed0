"""Generators: sample n responses per prompt, score them, publish scored groups."""
