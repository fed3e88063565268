"""Keyword spotting with a DS-CNN bundle: an application that embeds only edgedl's runtime.

    python examples/kws_app.py ds_cnn.edgedl recordings/3_theo_0.wav recordings/7_jackson_1.wav

For each WAV file (8 kHz mono 16-bit PCM, as in the Free Spoken Digit Dataset) it prints the
predicted digit and the model's confidence:

    recordings/3_theo_0.wav	3	0.982

The features are computed here, in numpy, from the parameters the bundle's manifest records under
``preprocessing`` (written by ``edgedl train``/``edgedl compile``): the same framing, window, mel
filterbank, log and normalisation the model was trained on. Nothing here imports TensorFlow or
Keras: on a device this needs numpy, edgedl's runtime and one engine (``pip install edgedl[runtime]``).

Make a bundle with:

    edgedl train ds_cnn -o ds_cnn.keras
    edgedl compile ds_cnn.keras --target x86_64 --backend litert --quantize int8 -o ds_cnn.edgedl
"""

from __future__ import annotations

import argparse
import re
import sys
import wave

import numpy as np

import edgedl.runtime as rt
from edgedl.data import features as F
from edgedl.errors import EdgeDLError


class FeatureError(Exception):
    """The bundle's preprocessing is not one this application can compute."""


def read_wav(path: str, sample_rate: int) -> np.ndarray:
    """Samples of a mono 16-bit PCM WAV file at ``sample_rate`` as float32 in [-1, 1) (int16 / 32768)."""
    with wave.open(path, "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        if (channels, width, rate) != (1, 2, sample_rate):
            raise ValueError(f"expected {sample_rate} Hz mono 16-bit PCM, got {rate} Hz, {channels} channel(s), "
                             f"{8 * width}-bit")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


class Features:
    """Log-mel or MFCC features as the manifest's ``preprocessing`` describes them."""

    def __init__(self, pre: dict | None):
        if not pre or pre.get("features") not in ("logmel", "mfcc"):
            raise FeatureError(f"the bundle's preprocessing is {(pre or {}).get('features')!r}; this application "
                               "computes 'logmel' or 'mfcc' audio features (a DS-CNN trained on fsdd)")
        if not str(pre.get("window", "")).startswith("hann") or not str(pre["mel"].get("scale", "")).startswith("htk"):
            raise FeatureError(f"unsupported window {pre.get('window')!r} or mel scale {pre['mel'].get('scale')!r}")
        offset = re.fullmatch(r"natural log\(mel \+ ([0-9.eE+-]+)\)", str(pre.get("log", "")))
        if offset is None:
            raise FeatureError(f"unsupported log step {pre.get('log')!r}")
        self.kind = pre["features"]
        self.sample_rate = int(pre["sample_rate_hz"])
        self.num_samples = int(pre["num_samples"])
        self.frame_length, self.frame_step = int(pre["frame_length"]), int(pre["frame_step"])
        self.fft_length = int(pre["fft_length"])
        self.log_offset = float(offset[1])
        mel = pre["mel"]
        self.filterbank = F.mel_filterbank(int(mel["num_bands"]), self.fft_length, self.sample_rate,
                                           float(mel["low_hz"]), float(mel["high_hz"]))
        self.dct = (F.dct_matrix(int(mel["num_bands"]), int(pre["dct"]["num_coefficients"]))
                    if self.kind == "mfcc" else None)
        norm = pre["normalise"]
        self.mean = np.asarray(norm["mean"], np.float32)
        self.std = np.asarray(norm["std"], np.float32)

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        """One recording (float samples) to the model's input: (frames, bands, 1), normalised."""
        signal = F.pad_or_trim(signal, self.num_samples)[None]
        frames = F.frames(signal, self.frame_length, self.frame_step) * F.hann_window(self.frame_length)
        spectrum = np.fft.rfft(frames, n=self.fft_length, axis=-1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        x = np.log(power @ self.filterbank.T + self.log_offset).astype(np.float32)
        if self.dct is not None:
            x = (x @ self.dct.T).astype(np.float32)
        return ((x - self.mean) / self.std).astype(np.float32)[0, ..., None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Spot spoken digits in WAV files with an edgedl DS-CNN bundle.")
    parser.add_argument("bundle", help="the bundle (from edgedl compile)")
    parser.add_argument("wavs", nargs="+", metavar="WAV", help="8 kHz mono 16-bit PCM recordings")
    parser.add_argument("--threads", type=int, default=1, help="engine threads")
    args = parser.parse_args(argv)

    try:
        model = rt.load(args.bundle, num_threads=args.threads)
        features = Features(model.manifest.get("preprocessing"))
    except (EdgeDLError, FeatureError) as e:  # one line, not a traceback
        print(f"error: {args.bundle}: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.wavs:
        try:
            x = features(read_wav(path, features.sample_rate))
        except (OSError, EOFError, wave.Error, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        probs = model.predict(x[None])[0]
        digit = int(np.argmax(probs))
        print(f"{path}\t{digit}\t{float(probs[digit]):.3f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
