"""``s2mts2 serve``: a local web page showing what a model sees.

Dropped images get every class's probability and a Grad-CAM overlay (:mod:`.uploads`); a prepared
split can be browsed with its labels, the model's probabilities and the split's metrics
(:mod:`.browse`). :mod:`.app` is the HTTP layer (Starlette), :mod:`.run` starts it (uvicorn).
"""
