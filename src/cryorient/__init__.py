"""cryorient: recover cryo-EM particle orientations from learned pairwise distances.

The four stages of the method (Banjac, Donati, Defferrard, arXiv:2104.06237):
simulate projections, learn distances between them, recover orientations from the
distances, reconstruct the density. Conventions are stated once in
:mod:`cryorient.conventions`.
"""

__version__ = "0.1.0"
