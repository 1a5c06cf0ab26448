"""Stage 2: orientations from pairwise distances; the ambiguity; alignment for evaluation."""
