"""kwskit: small-footprint keyword spotting toolkit (data, features, models, training, streaming)."""

__version__ = "0.1.0"

SAMPLE_RATE = 16000  # Hz; every clip is resampled to this on load
CLIP_SAMPLES = 16000  # one second
