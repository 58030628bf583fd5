"""Networks of both stages: torchvision backbones, heads, the EMA teacher and the negative queue.

Import from the submodules: ``backbones``, ``heads``, ``ema``, ``queue``.
"""
