"""A small ctypes binding to the eSpeak NG C library shipped by ``espeakng-loader``.

Only what the synthetic data set needs: initialise in retrieval mode, pick a voice
(``"en-us+f3"`` = language + variant), set rate / pitch / range / volume, and synthesize one
text into an int16 array. The library keeps global state and is not thread-safe: use one
``Engine`` per process (``Engine.get()``), and processes, not threads, for parallelism.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from kwskit.errors import KwsError

# speak_lib.h enums (stable across espeak-ng 1.4x-1.5x).
AUDIO_OUTPUT_RETRIEVAL = 1
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
espeakCHARS_UTF8 = 1
espeakINITIALIZE_DONT_EXIT = 0x8000  # return an error code instead of calling exit()
EE_OK = 0

espeakRATE, espeakVOLUME, espeakPITCH, espeakRANGE = 1, 2, 3, 4

# Parameter limits from the eSpeak NG docs: rate in words per minute, the rest 0..100
# (volume may go to 200 but clips).
RATE_MIN, RATE_MAX = 80, 450


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


def _paths() -> tuple[str, str]:
    """(library path, data path) from espeakng-loader, or KwsError saying what is missing."""
    try:
        import espeakng_loader
    except ImportError:
        raise KwsError("espeakng-loader: package not installed "
                       "(pip install espeakng-loader)") from None
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except Exception as exc:  # the loader raises RuntimeError for a missing data folder
        raise KwsError(f"espeakng-loader: {exc}") from None


def data_path() -> Path:
    """The espeak-ng-data folder (voices, language dictionaries)."""
    return Path(_paths()[1])


def available_variants() -> list[str]:
    """Names of the voice variants (files under espeak-ng-data/voices/!v)."""
    folder = data_path() / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def available_languages(prefix: str = "") -> list[str]:
    """Language voice names (lower case, e.g. 'en-gb-x-rp') whose names start with ``prefix``."""
    root = data_path() / "lang"
    names = {p.name.lower() for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()
    return sorted(n for n in names if n.startswith(prefix))


class Engine:
    """One initialised eSpeak NG instance (per process). Output is int16 at ``sample_rate`` Hz."""

    _instance: "Engine | None" = None

    def __init__(self) -> None:
        lib_path, data = _paths()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise KwsError(f"{lib_path}: cannot load the eSpeak NG library ({exc})") from None
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                     ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        # espeak-ng >= 1.52 has its own noise generator, seeded from the clock at start-up
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        # Synchronous retrieval: espeak_Synth returns once all audio went through the callback.
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(),
                                     espeakINITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise KwsError(f"{data}: eSpeak NG failed to initialise with this data folder")
        self.lib = lib
        self.sample_rate = int(rate)  # 22050 Hz for the standard voices
        self.version = (lib.espeak_Info(None) or b"?").decode(errors="replace")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._pid = os.getpid()
        # eSpeak draws breath / whisper noise from a random generator (its own in 1.52, the C
        # library's rand() before); reseeding both before every utterance makes that noise a
        # function of the request, not of the clock or of what the process said before.
        try:
            self._libc = ctypes.CDLL(None)
            self._libc.srand.argtypes = [ctypes.c_uint]
        except (OSError, AttributeError):
            self._libc = None

    @classmethod
    def get(cls) -> "Engine":
        """The process-wide engine, created on first use (re-created after a fork)."""
        inst = cls._instance
        if inst is None or inst._pid != os.getpid():
            inst = cls._instance = cls()
        return inst

    def _collect(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep going

    def set_voice(self, name: str) -> None:
        """Select a voice by name, e.g. 'en-us' or 'en-gb-x-rp+f3'. KwsError if unknown."""
        if name == self._voice:
            return
        if self.lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
            raise KwsError(f"voice: eSpeak NG has no voice {name!r}")
        self._voice = name

    def synth(self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
              volume: int = 100, noise_seed: int = 1) -> np.ndarray:
        """Speak ``text``; returns int16 samples at ``self.sample_rate`` (may be empty).

        rate: words per minute (80..450); pitch, pitch_range: 0..100 (50 = voice default);
        volume: 0..200 (100 = normal); noise_seed seeds the breath/whisper noise.
        """
        self.set_voice(voice)
        lib = self.lib
        lib.espeak_SetParameter(espeakRATE, int(np.clip(rate, RATE_MIN, RATE_MAX)), 0)
        lib.espeak_SetParameter(espeakPITCH, int(np.clip(pitch, 0, 100)), 0)
        lib.espeak_SetParameter(espeakRANGE, int(np.clip(pitch_range, 0, 100)), 0)
        lib.espeak_SetParameter(espeakVOLUME, int(np.clip(volume, 0, 200)), 0)
        if self._set_seed is not None:
            self._set_seed(int(noise_seed) & 0x7FFFFFFF)
        if self._libc is not None:
            self._libc.srand(int(noise_seed) & 0xFFFFFFFF)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        err = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, espeakCHARS_UTF8, None, None)
        if err != EE_OK:
            raise KwsError(f"eSpeak NG could not synthesize {text!r} (error {err})")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
