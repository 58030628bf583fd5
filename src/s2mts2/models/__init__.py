"""Networks: backbones, heads, EMA teacher, negative queue; may import runtime, errors, files."""
