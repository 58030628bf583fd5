"""Datasets: adapters (files -> table), splits, uint8 cache, augmentation, batch loading; may
import config, errors, files and task."""
