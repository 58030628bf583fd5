"""s2mts2: Self-supervised Mean Teacher for semi-supervised medical image classification."""

__version__ = "0.1.0"
