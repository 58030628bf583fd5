"""Datasets: adapters (files -> table), splits, uint8 cache, augmentation, batch loading."""
