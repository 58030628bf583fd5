"""Training loops (stage 1 and 2), batch loading, checkpoints, run folders."""
