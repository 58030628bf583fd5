"""How networks run, below the methods: device, precision, compile, CUDA graphs, DDP, split batch
norm, the step runner; may import only torch and s2mts2.errors."""
