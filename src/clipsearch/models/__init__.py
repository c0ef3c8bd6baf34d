"""Model backends behind one interface; see :mod:`clipsearch.models.base` and ``registry``."""
