"""Stage 0: simulated particle stacks (projection, shifts, CTF, noise)."""
