"""Stage 3: the volume from images and orientations (direct Fourier inversion) and FSC."""
