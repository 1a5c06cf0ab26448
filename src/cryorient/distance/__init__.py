"""Stage 1: the learned distance (a Siamese CNN), its training and its use on a stack."""
