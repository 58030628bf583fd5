"""Training loops of both stages, the step builders, checkpoints, evaluation, run folders; may
import config, data, models, losses, methods, runtime and eval."""
