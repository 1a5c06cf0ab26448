"""The image-formation model and its adjoint, shared by every stage.

    image = shift( CTF x slice(V, R) ) + noise          (render, noise)
    V     = sum CTF F(image) inserted along R / sum CTF^2  (accumulator)

``projector`` (a prepared volume and its central slices), ``render`` (projection x CTF x
shift), ``noise`` (white noise at an SNR, the SNR estimated from images), ``accumulator``
(direct Fourier inversion: insert, finalize, half maps), ``translation`` (cross-correlation
shift search, shifts from a reconstruction), ``batches`` (a stack read in batches with each
batch's CTF) and ``align`` (orientations refined against reprojections of half maps).
simulate, distance, orientation, reconstruct and refine call down into this package; it
calls none of them.
"""
