"""The methods, one step each: stage 1 JCL / MoCo (contrastive), stage 2 mean teacher (mean_teacher;
also supervised and s2mts2); may import config, data, models, losses and runtime."""
