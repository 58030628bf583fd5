"""The epoch loop and the two stages that run it, the step builders, checkpoints, evaluation,
run folders; may import config, data, models, losses, methods, runtime and eval."""
