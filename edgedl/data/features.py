"""Audio features in plain numpy: framing, Hann window, power spectrum, mel filterbank, log, DCT.

Used by the FSDD loader and for wav files users bring; small and dependency-free so the same steps can be redone on a device
from the parameters a :class:`~edgedl.data.base.Dataset` records in ``preprocessing``.

Example:
    >>> import numpy as np
    >>> from edgedl.data.features import log_mel
    >>> log_mel(np.zeros((2, 8000), np.float32)).shape
    (2, 61, 40)
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np

from edgedl.errors import InputFileError

SAMPLE_RATE = 8000
NUM_SAMPLES = 8000  # 1.0 s: shorter clips are zero-padded at the end, longer ones cut at 1.0 s
FRAME_LENGTH = 256  # 32 ms, also the FFT size
FRAME_STEP = 128  # 16 ms
NUM_MEL_BANDS = 40
MEL_LOW_HZ = 20.0
MEL_HIGH_HZ = 4000.0
LOG_OFFSET = 1e-6  # log(mel power + LOG_OFFSET): keeps digital silence finite
NUM_MFCC = 13


def num_frames(num_samples: int = NUM_SAMPLES, frame_length: int = FRAME_LENGTH, frame_step: int = FRAME_STEP) -> int:
    """Frames without padding: 1 + (samples - length) // step (61 for 1 s at 8 kHz)."""
    return 1 + (num_samples - frame_length) // frame_step


def pad_or_trim(signal: np.ndarray, num_samples: int = NUM_SAMPLES) -> np.ndarray:
    """Zero-pad at the end, or cut at the end, to exactly ``num_samples``."""
    signal = np.asarray(signal, dtype=np.float32)
    if len(signal) >= num_samples:
        return signal[:num_samples]
    return np.pad(signal, (0, num_samples - len(signal)))


def hann_window(length: int = FRAME_LENGTH) -> np.ndarray:
    """The periodic Hann window (as for spectral analysis): 0.5 - 0.5 cos(2 pi n / length)."""
    n = np.arange(length)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


def hz_to_mel(hz):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    num_bands: int = NUM_MEL_BANDS,
    fft_length: int = FRAME_LENGTH,
    sample_rate: int = SAMPLE_RATE,
    low_hz: float = MEL_LOW_HZ,
    high_hz: float = MEL_HIGH_HZ,
) -> np.ndarray:
    """Triangular mel filters, shape (num_bands, fft_length // 2 + 1), unnormalised (peak 1).

    Band edges are ``num_bands + 2`` points equally spaced on the HTK mel scale between ``low_hz``
    and ``high_hz``; band m rises linearly from edge m to edge m+1 and falls to edge m+2, evaluated
    at the FFT bin frequencies k * sample_rate / fft_length.
    """
    edges = mel_to_hz(np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), num_bands + 2))
    bins = np.arange(fft_length // 2 + 1) * sample_rate / fft_length
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def dct_matrix(num_inputs: int = NUM_MEL_BANDS, num_outputs: int | None = None) -> np.ndarray:
    """Orthonormal DCT-II as a matrix D (num_outputs, num_inputs): ``coefficients = D @ x``.

    D[k, n] = sqrt(2 / N) cos(pi (n + 0.5) k / N), with row 0 scaled by 1 / sqrt(2); the same as
    ``scipy.fft.dct(x, type=2, norm="ortho")``.
    """
    num_outputs = num_inputs if num_outputs is None else num_outputs
    n = np.arange(num_inputs)
    k = np.arange(num_outputs)[:, None]
    d = np.sqrt(2.0 / num_inputs) * np.cos(np.pi * (n + 0.5) * k / num_inputs)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def frames(signals: np.ndarray, frame_length: int = FRAME_LENGTH, frame_step: int = FRAME_STEP) -> np.ndarray:
    """Overlapping frames of a batch of signals: (N, samples) -> (N, num_frames, frame_length)."""
    signals = np.asarray(signals, dtype=np.float32)
    count = num_frames(signals.shape[-1], frame_length, frame_step)
    index = np.arange(count)[:, None] * frame_step + np.arange(frame_length)[None, :]
    return signals[..., index]


def power_spectrum(signals: np.ndarray) -> np.ndarray:
    """|rfft(frame * hann)|^2 of every frame: (N, samples) -> (N, frames, FRAME_LENGTH // 2 + 1)."""
    spectrum = np.fft.rfft(frames(signals) * hann_window(), n=FRAME_LENGTH, axis=-1)
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def log_mel(signals: np.ndarray) -> np.ndarray:
    """log(mel filterbank @ power spectrum + LOG_OFFSET): (N, 8000) -> (N, 61, 40), float32."""
    mel = power_spectrum(signals) @ mel_filterbank().T
    return np.log(mel + LOG_OFFSET).astype(np.float32)


def mfcc(signals: np.ndarray, num_coefficients: int = NUM_MFCC) -> np.ndarray:
    """The first ``num_coefficients`` of the orthonormal DCT-II of the log-mel: (N, 61, 13)."""
    return (log_mel(signals) @ dct_matrix(NUM_MEL_BANDS, num_coefficients).T).astype(np.float32)


def describe(kind: str) -> dict:
    """The feature parameters, JSON-able, for ``Dataset.preprocessing``."""
    d = {
        "features": kind,
        "sample_rate_hz": SAMPLE_RATE,
        "input": "int16 PCM / 32768",
        "num_samples": NUM_SAMPLES,
        "pad_or_trim": "zero-pad at the end, or cut at the end, to num_samples",
        "frame_length": FRAME_LENGTH,
        "frame_step": FRAME_STEP,
        "fft_length": FRAME_LENGTH,
        "window": "hann, periodic: 0.5 - 0.5*cos(2*pi*n/frame_length)",
        "spectrum": "power |rfft|^2, no scaling",
        "num_frames": num_frames(),
        "mel": {
            "num_bands": NUM_MEL_BANDS,
            "low_hz": MEL_LOW_HZ,
            "high_hz": MEL_HIGH_HZ,
            "scale": "htk: 2595*log10(1+f/700)",
            "filters": "triangular, peak 1, unnormalised, edges equally spaced in mel",
        },
        "log": f"natural log(mel + {LOG_OFFSET:g})",
    }
    if kind == "mfcc":
        d["dct"] = {"type": "DCT-II", "norm": "ortho", "num_coefficients": NUM_MFCC}
    return d


# Normalisation: (features - MEAN) / STD. Computed once with ``normalisation_constants()`` below on
# the official train split (2700 recordings of FSDD v1.0.10, all 61 frames each, zero padding
# included) and hard-coded so every run, and every device, uses the same numbers. log-mel: one mean
# and std over all values (keeps the relative level of the bands); MFCC: one per coefficient (their
# scales differ by orders of magnitude).
LOGMEL_MEAN = -9.9912
LOGMEL_STD = 4.9934
MFCC_MEAN = (
    -63.1896, 2.9606, 0.8259, -0.3243, -1.4748, -0.7287, -0.5391, -0.2863, -0.4445, -0.2538, -0.3536, -0.4467, -0.4875,
)
MFCC_STD = (
    29.958, 5.7263, 3.3591, 2.5542, 2.8298, 2.3299, 1.6609, 1.4111, 1.3029, 1.1766, 1.2444, 1.162, 1.1324,
)


def normalisation(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """FSDD's feature normalisation (mean, std) for ``kind`` ("logmel" or "mfcc")."""
    if kind == "mfcc":
        return np.asarray(MFCC_MEAN, np.float32), np.asarray(MFCC_STD, np.float32)
    return np.float32(LOGMEL_MEAN), np.float32(LOGMEL_STD)


def read_wav(path: Path) -> np.ndarray:
    """Samples of an 8 kHz mono 16-bit PCM WAV file as float32 in [-1, 1).

    Raises:
        InputFileError: the file is not such a WAV file, or is corrupt or truncated.
    """
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, count = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if (channels, width, rate) != (1, 2, SAMPLE_RATE):
                raise InputFileError(
                    path,
                    f"expected 8 kHz mono 16-bit PCM, got {rate} Hz, {channels} channel(s), {8 * width}-bit",
                )
            data = w.readframes(count)
    except (wave.Error, EOFError, OSError, RuntimeError, ValueError, struct.error) as e:  # all seen on bad files
        raise InputFileError(path, f"not a readable WAV file ({e})") from e
    if len(data) != 2 * count:
        raise InputFileError(path, f"truncated: the header declares {count} samples, the file holds {len(data) // 2}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
