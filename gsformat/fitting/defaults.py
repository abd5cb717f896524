"""The fitter's defaults that other layers name (convert's options load without the fitter)."""

DEFAULT_ITERS = 1000  # `fit_images` and `gsformat convert` (fit_bench.py: the previous fitter's
#                       2,000-iteration PSNR is passed at ~470–840 iterations; RESULTS.md)
REFERENCE_PSNR = 30.0  # matched steps: the fit quality a codec's steps are for, by default
