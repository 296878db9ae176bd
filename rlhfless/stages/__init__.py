"""RLHF stages: actors, algorithms, tasks, config and the iteration loop."""
