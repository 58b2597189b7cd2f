"""A synthetic spoken-word data set made with eSpeak NG, in the Speech Commands layout.

``synthesize_dataset(out, words, per_word, seed)`` writes::

    out/<word>/<speaker>_nohash_<n>.wav    16 kHz mono 16-bit, exactly 1 s
    out/_background_noise_/*.wav           45-s noise recordings (white, pink, babble, ...)
    out/validation_list.txt, testing_list.txt   speaker-disjoint ~80/10/10 split
    out/speakers.csv, clips.csv, README.md      how it was made (clips.csv: word position)

A "speaker" is one combination of English accent, voice variant, speaking rate, pitch and
pitch range; its id is 8 hex characters of a hash of that combination. Each speaker says a word
one to a few times with small jitter, and every clip gets a random position in the second, a
random level and, sometimes, a little noise, a synthetic room or a telephone band.

Determinism: every random choice comes from a numpy SeedSequence keyed by (seed, word,
speaker, repetition), and each batch of clips is rendered in a freshly forked process, because
eSpeak keeps hidden state between utterances (its pitch-flutter phase) that would otherwise make
the audio depend on which process rendered what before. Same seed -> byte-identical files for
any number of workers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kwskit import CLIP_SAMPLES, SAMPLE_RATE
from kwskit.data.audio import to_mono_rate, write_audio
from kwskit.errors import KwsError
from kwskit.fsutil import atomic_dir

# The mini10 keywords, then GSC "unknown" words that eSpeak pronounces distinctly.
DEFAULT_WORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go",
                 "bed", "bird", "cat", "dog", "happy", "house", "marvin", "tree", "wow")
DEFAULT_PER_WORD = 300
BACKGROUND_DIR = "_background_noise_"
MARKER = ".kwskit_synth.json"  # written last: its presence means the set is complete
GENERATOR_VERSION = 1  # bump when the audio a seed produces changes

# English accents shipped with eSpeak NG (language voices); missing ones are skipped.
ENGLISH_VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-us-nyc")
# Voice variants (espeak-ng-data/voices/!v) grouped so that female and male voices are about
# equally common; robotic and novelty variants are left out.
VARIANT_GROUPS = {
    "male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "Diogo", "Henrique",
             "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "antonio", "ed", "gustave",
             "iven", "iven2", "iven3", "iven4", "john", "marcelo", "michel", "miguel", "norbert",
             "pablo", "paul", "pedro", "quincy", "robert", "travis", "victor", "grandpa", "boris"),
    "female": ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty",
               "belinda", "grandma", "linda", "shelby", "steph", "steph2", "steph3"),
    "klatt": ("klatt", "klatt2", "klatt3", "adam", "benjamin", "caleb", "david", "edward"),
    "rough": ("whisper", "whisperf", "croak"),
    "plain": ("",),  # the language's own default voice
}
GROUP_WEIGHTS = {"male": 0.38, "female": 0.38, "klatt": 0.12, "rough": 0.06, "plain": 0.06}
RATE_WPM = (100, 210)  # speaking rate range, words per minute (eSpeak default 175)
PITCH = (20, 90)  # eSpeak pitch 0..100 (50 = the variant's own base pitch)
PITCH_RANGE = (10, 90)  # eSpeak intonation range 0..100
REPEATS = ((1, 2, 3, 4), (0.6, 0.25, 0.1, 0.05))  # times a speaker says a word, like GSC
SPLITS = ("train", "validation", "test")
HELD_OUT_FRACTION = 0.1  # of speakers (and of each word's clips) for validation and for test
MARGIN = 0.02  # s of quiet kept at both ends of every clip: a word is never cut
CHUNK_CLIPS = 128  # clips rendered per fresh worker process
BACKGROUND_SECONDS = 45.0
BABBLE_TALKERS = 8
BACKGROUND_FILES = ("white_noise.wav", "pink_noise.wav", "brown_noise.wav", "mains_hum.wav",
                    "fan_rumble.wav", "babble.wav")

# Filler words for the babble recording (never a data-set word).
BABBLE_WORDS = (
    "about after again air all almost also always animal answer area around back because "
    "before began best better between big black blue book both boy bring brother build "
    "call came car carry change children city close cold color come could country cover "
    "cross day deep different distance does done door draw dream during each early earth "
    "easy eight enough even every example face family far farm father feet few field find "
    "fire first fish five food form found four friend full game garden gave girl give good "
    "great green ground group grow half hand hard have head hear heard help here high hold "
    "home hour idea important inside island just keep kind king knew know land large last "
    "later learn letter life light line list little live long look made make many mark "
    "matter mean measure might mile mind minute money moon more morning most mother mountain "
    "move much music must name near need never next night nothing notice number often once "
    "only open order other over page paper part pattern people picture piece place plant play "
    "point power problem public question quick rain read ready real record river road rock "
    "room round same school science second seem sentence seven several shape short should "
    "show side simple since size sleep slow small snow some song soon sound south space "
    "special spring stand star start state still story street strong study such summer "
    "sun sure table take talk teacher tell than that their them then there these thing think "
    "those thought three through time together told took town travel true turn under until "
    "upon usual very voice walk warm watch water weather week well went were what wheel when "
    "where which while white whole why wide wind window winter with without woman wonder "
    "wood word work world would write year young"
).split()

_WORD_RE = re.compile(r"[a-z]+(?:['-][a-z]+)*")


# ----------------------------------------------------------------------------- speakers
@dataclass(frozen=True)
class Speaker:
    """One synthetic talker. rate in words/min; pitch and pitch_range on eSpeak's 0..100 scale."""

    language: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int

    @property
    def voice(self) -> str:
        """eSpeak voice name: language, plus '+variant' when there is one."""
        return f"{self.language}+{self.variant}" if self.variant else self.language

    @property
    def id(self) -> str:
        key = f"{self.language}|{self.variant}|{self.rate}|{self.pitch}|{self.pitch_range}"
        return hashlib.sha1(key.encode()).hexdigest()[:8]


def _key(part) -> int:
    """A stable 32-bit integer for a string or int (Python's hash() is salted per process)."""
    if isinstance(part, (int, np.integer)):
        return int(part) & 0xFFFFFFFF
    return int.from_bytes(hashlib.sha256(str(part).encode()).digest()[:4], "little")


def _rng(seed: int, *parts) -> np.random.Generator:
    """A Generator that depends only on (seed, parts): the same anywhere, in any order."""
    return np.random.default_rng(np.random.SeedSequence([_key(seed)] + [_key(p) for p in parts]))


def _available_voices() -> tuple[list[str], dict[str, list[str]]]:
    from kwskit.data.espeak import available_languages, available_variants

    langs = [v for v in ENGLISH_VOICES if v in set(available_languages("en"))]
    have = set(available_variants()) | {""}
    groups = {g: [v for v in names if v in have] for g, names in VARIANT_GROUPS.items()}
    if not langs:
        raise KwsError("espeakng-loader: its eSpeak NG data holds no English voice")
    return langs, {g: v for g, v in groups.items() if v}


def make_speakers(seed: int, n: int) -> list[Speaker]:
    """``n`` distinct speakers drawn from (seed) only: accent, variant, rate, pitch, range."""
    langs, groups = _available_voices()
    names = list(groups)
    weights = np.array([GROUP_WEIGHTS[g] for g in names])
    rng = _rng(seed, "speakers")
    speakers: dict[str, Speaker] = {}
    while len(speakers) < n:
        group = groups[names[rng.choice(len(names), p=weights / weights.sum())]]
        s = Speaker(language=langs[rng.integers(len(langs))],
                    variant=group[rng.integers(len(group))],
                    rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
                    pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
                    pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)))
        speakers.setdefault(s.id, s)  # a repeated combination is simply drawn again
    return list(speakers.values())


def split_speakers(seed: int, speakers: list[Speaker]) -> dict[str, str]:
    """speaker id -> 'train' / 'validation' / 'test': about 80/10/10, at least one held out
    in each of validation and test."""
    n = len(speakers)
    n_held = max(1, round(HELD_OUT_FRACTION * n))
    order = _rng(seed, "splits").permutation(n)
    split = {}
    for rank, i in enumerate(order):
        split[speakers[i].id] = ("validation" if rank < n_held else
                                 "test" if rank < 2 * n_held else "train")
    return split


def plan_word(seed: int, word: str, per_word: int, by_split: dict[str, list[Speaker]]):
    """[(speaker, n)] for ``per_word`` clips of ``word``: each split gets its share of clips,
    spread over that split's speakers with 1-4 repetitions each (n = repetition index)."""
    held = max(1, round(HELD_OUT_FRACTION * per_word)) if per_word >= 3 else 0
    wanted = {"validation": held, "test": held, "train": per_word - 2 * held}
    reps, probs = REPEATS
    plan = []
    for split in SPLITS:
        pool, remaining = by_split[split], wanted[split]
        rng = _rng(seed, "plan", word, split)
        order = rng.permutation(len(pool))
        said: dict[str, int] = {}
        i = 0
        while remaining > 0:
            spk = pool[order[i % len(pool)]]
            # first pass: a GSC-like number of repeats; later passes (tiny pools) one more each
            k = int(rng.choice(reps, p=probs)) if i < len(pool) else 1
            for _ in range(min(k, remaining)):
                plan.append((spk, said.get(spk.id, 0)))
                said[spk.id] = said.get(spk.id, 0) + 1
                remaining -= 1
            i += 1
    return plan


# ----------------------------------------------------------------------------- audio
def speak(word: str, speaker: Speaker, *, rate: float | None = None, pitch: int | None = None,
          pitch_range: int | None = None, noise_seed: int = 1,
          max_seconds: float = 1.0 - 2 * MARGIN) -> np.ndarray:
    """``word`` said by ``speaker``: float32 at 16 kHz, leading/trailing silence trimmed.

    A word longer than ``max_seconds`` (s) is said again faster, and as a last resort sped up
    by resampling, so it always fits whole: speech is never cropped.
    """
    from kwskit.data.espeak import RATE_MAX, Engine

    engine = Engine.get()
    rate = float(speaker.rate if rate is None else rate)
    limit = int(max_seconds * SAMPLE_RATE)
    for _ in range(4):
        raw = engine.synth(word, speaker.voice, rate=round(rate),
                           pitch=speaker.pitch if pitch is None else pitch,
                           pitch_range=speaker.pitch_range if pitch_range is None else pitch_range,
                           noise_seed=noise_seed)
        x = _trim(to_mono_rate(raw.astype(np.float32) / 32768.0, engine.sample_rate))
        if len(x) == 0:
            raise KwsError(f"words: eSpeak NG produced no audio for {word!r} "
                           f"(voice {speaker.voice})")
        if len(x) <= limit or round(rate) >= RATE_MAX:
            break
        rate = min(RATE_MAX, rate * len(x) / limit * 1.05)
    if len(x) > limit:  # still too long at the fastest rate: time-compress (raises pitch)
        x = to_mono_rate(x, len(x), limit)[:limit]
    return x


def _trim(x: np.ndarray, floor_db: float = -50.0, pad: float = 0.005) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``floor_db`` below the peak, keeping ``pad`` s."""
    if len(x) == 0:
        return x
    loud = np.flatnonzero(np.abs(x) > np.abs(x).max() * 10 ** (floor_db / 20))
    if len(loud) == 0:
        return x[:0]
    p = int(pad * SAMPLE_RATE)
    return x[max(0, loud[0] - p): loud[-1] + 1 + p]


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0  # no infinite DC gain
    y = np.fft.irfft(spec / f ** (exponent / 2.0), n)
    y -= y.mean()
    return (y / (np.sqrt(np.mean(y**2)) + 1e-12)).astype(np.float32)


def _band(x: np.ndarray, low: float, high: float, taper: float = 100.0) -> np.ndarray:
    """Zero-phase band-pass by FFT mask with raised-cosine edges ``taper`` Hz wide (0 = no cut).

    The signal is zero-padded to twice its length so the filter's ringing does not wrap round.
    """
    m = 2 * len(x)
    spec = np.fft.rfft(x, m)
    f = np.fft.rfftfreq(m, 1.0 / SAMPLE_RATE)
    gain = np.ones_like(f)
    if low > 0:
        gain *= np.clip((f - low + taper) / taper, 0, 1)
    if high > 0:
        gain *= np.clip((high + taper - f) / taper, 0, 1)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    return np.fft.irfft(spec * gain, m)[: len(x)].astype(np.float32)


def _room(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Convolve with a random exponential-decay room response; returns (audio, RT60 in s)."""
    rt60 = float(rng.uniform(0.15, 0.7))
    n = int(min(rt60, 0.5) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)  # -60 dB at t = rt60
    drr_db = rng.uniform(0.0, 12.0)  # direct-to-reverberant energy ratio
    tail *= 10 ** (-drr_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    tail[0] = 1.0
    m = 1 << int(np.ceil(np.log2(len(x) + n)))
    y = np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(tail, m), m)[: len(x)]
    return y.astype(np.float32), rt60


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def render_clip(word: str, speaker: Speaker, rng: np.random.Generator):
    """One 1-s clip of ``word`` by ``speaker`` with per-utterance jitter and effects.

    Returns (float32 clip of CLIP_SAMPLES, info dict: start/end of the word in s, effects).
    """
    dry = speak(word, speaker,
                rate=speaker.rate * rng.uniform(0.9, 1.1),
                pitch=speaker.pitch + int(rng.integers(-5, 6)),
                pitch_range=speaker.pitch_range + int(rng.integers(-8, 9)),
                noise_seed=int(rng.integers(1, 2**31)))
    level_db = rng.uniform(-32.0, -16.0)  # speech RMS, dBFS
    dry = dry * (10 ** (level_db / 20) / (_rms(dry) + 1e-12))
    margin = int(MARGIN * SAMPLE_RATE)
    start = int(rng.integers(margin, CLIP_SAMPLES - margin - len(dry) + 1))
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    clip[start: start + len(dry)] = dry
    effects = []
    if rng.random() < 0.25:
        clip, rt60 = _room(rng, clip)
        clip *= _rms(dry) * np.sqrt(len(dry) / CLIP_SAMPLES) / (_rms(clip) + 1e-12)
        effects.append(f"room{rt60:.2f}s")
    band = rng.random()
    if band < 0.12:
        clip = _band(clip, 300.0, 3400.0)
        effects.append("phone")
    elif band < 0.24:
        cutoff = rng.uniform(2500.0, 5500.0)
        clip = _band(clip, 0.0, cutoff, taper=500.0)
        effects.append(f"lowpass{cutoff:.0f}Hz")
    # every real recording has a noise floor; half the clips get an audible one
    audible = rng.random() < 0.5
    kind = int(rng.integers(3))
    snr_db = rng.uniform(20.0, 45.0) if audible else rng.uniform(50.0, 65.0)
    clip = clip + coloured_noise(rng, CLIP_SAMPLES, kind) * (_rms(dry) * 10 ** (-snr_db / 20))
    if audible:
        effects.append(f"{('white', 'pink', 'brown')[kind]}{snr_db:.0f}dB")
    peak = float(np.abs(clip).max())
    if peak > 0.98:
        clip *= 0.98 / peak
    info = {"start_s": round(start / SAMPLE_RATE, 4),
            "end_s": round((start + len(dry)) / SAMPLE_RATE, 4),
            "effects": "+".join(effects)}
    return clip.astype(np.float32), info


# ----------------------------------------------------------------------------- background
def _babble(rng: np.random.Generator, n: int, banned: set[str]) -> np.ndarray:
    words = [w for w in BABBLE_WORDS if w not in banned]
    talkers = make_speakers(int(rng.integers(2**31)), BABBLE_TALKERS)
    mix = np.zeros(n, dtype=np.float64)
    for spk in talkers:
        parts, total = [], 0
        while total < n:
            text = " ".join(rng.choice(words, size=int(rng.integers(5, 12))))
            x = speak(text + ".", spk, noise_seed=int(rng.integers(1, 2**31)), max_seconds=60.0)
            parts += [x, np.zeros(int(rng.uniform(0.1, 0.6) * SAMPLE_RATE), np.float32)]
            total += len(x) + len(parts[-1])
        voice = np.roll(np.concatenate(parts)[:n], int(rng.integers(n)))  # talkers out of step
        mix += voice * (10 ** (rng.uniform(-4, 4) / 20) / (_rms(voice) + 1e-12))
    return _band(mix.astype(np.float32), 80.0, 4000.0, taper=400.0)


def _hum(rng: np.random.Generator, n: int, mains: float = 50.0) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    drift = 0.05 * np.sin(2 * np.pi * t / rng.uniform(5, 15))  # Hz of slow mains drift
    phase = 2 * np.pi * np.cumsum(mains + drift) / SAMPLE_RATE
    y = np.zeros(n)
    for h in range(1, 16):  # odd harmonics stronger, as from transformer saturation
        amp = (1.0 if h == 1 else 0.5 / h if h % 2 else 0.15 / h) * rng.uniform(0.5, 1.5)
        y += amp * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    return (y / _rms(y) + 0.05 * coloured_noise(rng, n, 1.0)).astype(np.float32)


def _fan(rng: np.random.Generator, n: int) -> np.ndarray:
    rumble = _band(coloured_noise(rng, n, 2.0), 20.0, 400.0, taper=40.0)
    t = np.arange(n) / SAMPLE_RATE
    blade = rng.uniform(60, 140)  # blade-pass tone, Hz, gently wobbling
    tone = np.sin(2 * np.pi * blade * t + 0.3 * np.sin(2 * np.pi * 0.3 * t))
    hiss = _band(coloured_noise(rng, n, 0.0), 1000.0, 6000.0, taper=500.0)
    y = rumble / _rms(rumble) + 0.4 * tone * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t)) + 0.1 * hiss
    return y.astype(np.float32)


def background_noises(seed: int, words: list[str], seconds: float = BACKGROUND_SECONDS):
    """{file name: float32 16-kHz audio} for the _background_noise_ folder."""
    n = int(seconds * SAMPLE_RATE)
    out = {
        "white_noise.wav": coloured_noise(_rng(seed, "bg", "white"), n, 0.0),
        "pink_noise.wav": coloured_noise(_rng(seed, "bg", "pink"), n, 1.0),
        "brown_noise.wav": coloured_noise(_rng(seed, "bg", "brown"), n, 2.0),
        "mains_hum.wav": _hum(_rng(seed, "bg", "hum"), n),
        "fan_rumble.wav": _fan(_rng(seed, "bg", "fan"), n),
        "babble.wav": _babble(_rng(seed, "bg", "babble"), n, set(words)),
    }
    for name, x in out.items():  # about -20 dBFS RMS, never clipping
        x = x * (0.1 / (_rms(x) + 1e-12))
        out[name] = (x * min(1.0, 0.95 / float(np.abs(x).max()))).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- workers
def _render_chunk(job):
    """Worker: render a list of clips (or the background folder) into the temp folder."""
    kind, seed, root, items = job
    root = Path(root)
    if kind == "background":
        for name, x in background_noises(seed, items).items():
            write_audio(root / BACKGROUND_DIR / name, x)
        return []
    rows = []
    for word, spk, n, split in items:
        rel = f"{word}/{spk.id}_nohash_{n}.wav"
        clip, info = render_clip(word, spk, _rng(seed, "clip", word, spk.id, n))
        write_audio(root / rel, clip)
        rows.append({"path": rel, "word": word, "speaker": spk.id, "split": split, **info})
    return rows


def _job_main(job, conn) -> None:
    """Child process: run one job, send ('ok', rows) or ('error', message) back."""
    try:
        conn.send(("ok", _render_chunk(job)))
    except KwsError as exc:
        conn.send(("error", str(exc)))
    except BaseException as exc:  # report, do not hang the parent
        conn.send(("error", f"synth worker failed: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _context():
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        # new processes fork from a server that already imported this module: cheap to start
        ctx.set_forkserver_preload([__name__])
    return ctx


def _run_jobs(jobs: list, workers: int):
    """Run every job in its own new process (never-used eSpeak), ``workers`` at a time;
    yields each job's result rows as it finishes."""
    ctx = _context()
    pending, running = list(jobs), {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_job_main, args=(pending.pop(0), send), daemon=True)
                proc.start()
                send.close()
                running[recv] = proc
            for recv in multiprocessing.connection.wait(list(running)):
                proc = running.pop(recv)
                try:
                    status, payload = recv.recv()
                except EOFError:
                    status, payload = "error", None
                recv.close()
                proc.join()
                if status != "ok":
                    raise KwsError(payload or f"synth worker process died (exit code "
                                              f"{proc.exitcode})")
                yield payload
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.join()


# ----------------------------------------------------------------------------- data set
def _check_words(words) -> list[str]:
    if isinstance(words, str):
        words = words.split(",")
    words = list(words)
    if not words:
        raise KwsError("words: no words given")
    clean = []
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w.strip():
            raise KwsError(f"words: word {i + 1} is empty")
        w = w.strip().lower()
        if not _WORD_RE.fullmatch(w) or len(w) > 32:
            raise KwsError(f"words: {w!r} has characters eSpeak cannot say as an English word "
                           "(use letters a-z, with ' or - inside)")
        if w in clean:
            raise KwsError(f"words: {w!r} is given twice")
        clean.append(w)
    return clean


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise KwsError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def _params(words: list[str], per_word: int, seed: int) -> dict:
    return {"generator": "kwskit-synth", "version": GENERATOR_VERSION,
            "words": sorted(words), "per_word": per_word, "seed": seed}


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _same(marker: dict | None, params: dict) -> bool:
    return marker is not None and all(marker.get(k) == v for k, v in params.items())


def synthesize_dataset(out, words=DEFAULT_WORDS, per_word=None, seed=0, workers=None, *,
                       quiet: bool = False, replace: bool = False) -> str:
    """Write a Speech Commands style data set of eSpeak NG speech to ``out``.

    words: the words (folder names); per_word: clips per word (default 300); seed: every random
    choice; workers: processes (default: all cores). Returns a one-line summary. If ``out``
    already holds this exact data set nothing is done; any other non-empty ``out`` is an error
    (unless ``replace``: then whatever is there is replaced; used for the cache).
    """
    t0 = time.perf_counter()
    words = _check_words(words)
    per_word = _check_int("per_word", DEFAULT_PER_WORD if per_word is None else per_word, 1)
    seed = _check_int("seed", seed, 0)
    workers = _check_int("workers", (os.cpu_count() or 1) if workers is None else workers, 1)
    out = Path(out).expanduser()
    params = _params(words, per_word, seed)

    if out.exists() and not out.is_dir():
        raise KwsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = _read_marker(out)
        if _same(marker, params):
            return (f"{out} already holds this data set ({len(words)} words x {per_word} clips, "
                    f"seed {seed}); nothing to do")
        if marker is not None and marker.get("generator") == "kwskit-synth" and not replace:
            raise KwsError(f"{out}: holds a kwskit synth set made with other parameters "
                           f"(seed {marker.get('seed')}, per_word {marker.get('per_word')}, "
                           f"{len(marker.get('words', []))} words); pick another folder")
        if not replace:
            raise KwsError(f"{out}: folder is not empty; pick a new or empty folder")

    from kwskit.data.espeak import Engine

    Engine.get()  # fail early, with a clear message, if the library cannot load
    speakers = make_speakers(seed, max(10, per_word))
    split_of = split_speakers(seed, speakers)
    by_split = {s: [p for p in speakers if split_of[p.id] == s] for s in SPLITS}
    items = [(w, spk, n, split_of[spk.id]) for w in words
             for spk, n in plan_word(seed, w, per_word, by_split)]
    items.sort(key=lambda it: (it[1].id, it[0], it[2]))  # one speaker's clips together
    jobs = [("clips", seed, None, items[i: i + CHUNK_CLIPS])
            for i in range(0, len(items), CHUNK_CLIPS)]

    rows = []
    with atomic_dir(out) as tmp:
        for w in words:
            (tmp / w).mkdir()
        (tmp / BACKGROUND_DIR).mkdir()
        os.chmod(tmp, (tmp / BACKGROUND_DIR).stat().st_mode & 0o7777)  # mkdtemp made it 0700
        jobs = [("background", seed, str(tmp), words)] + [(k, s, str(tmp), it)
                                                          for k, s, _, it in jobs]
        bar = tqdm(total=len(items), unit="clip", desc="synth", disable=True if quiet else None)
        try:
            for got in _run_jobs(jobs, workers):
                rows += got
                bar.update(len(got))
        finally:
            bar.close()
        rows.sort(key=lambda r: r["path"])
        _write_metadata(tmp, rows, speakers, split_of, words, per_word, seed)
        (tmp / MARKER).write_text(json.dumps(dict(params, clips=len(rows),
                                                   speakers=len(speakers)), indent=2) + "\n")
    used = {r["speaker"] for r in rows}
    counts = {s: len({r["speaker"] for r in rows if r["split"] == s}) for s in SPLITS}
    nw = f"{len(words)} word{'s' if len(words) > 1 else ''}"
    return (f"wrote {len(rows)} clips ({nw} x {per_word}) from {len(used)} speakers "
            f"({counts['train']} train / {counts['validation']} validation / {counts['test']} "
            f"test) and {len(BACKGROUND_FILES)} background files in "
            f"{time.perf_counter() - t0:.1f} s -> {out}")


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _write_metadata(root: Path, rows, speakers, split_of, words, per_word, seed) -> None:
    from kwskit.data.espeak import Engine

    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        lines = [r["path"] for r in rows if r["split"] == split]
        (root / name).write_text("".join(p + "\n" for p in lines))
    used = {r["speaker"] for r in rows}
    spk_rows = [{"speaker": s.id, "split": split_of[s.id], "language": s.language,
                 "variant": s.variant or "-", "rate_wpm": s.rate, "pitch": s.pitch,
                 "pitch_range": s.pitch_range} for s in sorted(speakers, key=lambda s: s.id)
                if s.id in used]
    (root / "speakers.csv").write_text(_csv(spk_rows, list(spk_rows[0])))
    (root / "clips.csv").write_text(_csv(rows, list(rows[0])))
    n_clips = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    n_spk = {s: sum(r["split"] == s for r in spk_rows) for s in SPLITS}
    langs = sorted({s["language"] for s in spk_rows})
    variants = sorted({s["variant"] for s in spk_rows})
    version = Engine.get().version
    text = f"""# Synthetic spoken words (kwskit)

Made by `kwskit data synth` (generator v{GENERATOR_VERSION}) with eSpeak NG {version}.
Same layout as Google Speech Commands: `<word>/<speaker>_nohash_<n>.wav`, 16 kHz mono
16-bit PCM, exactly 1 s each. Rebuild it byte for byte with:

    kwskit data synth OUT --words {",".join(words)} --per-word {per_word} --seed {seed}

| | train | validation | test | total |
|---|---|---|---|---|
| speakers | {n_spk['train']} | {n_spk['validation']} | {n_spk['test']} | {len(spk_rows)} |
| clips | {n_clips['train']} | {n_clips['validation']} | {n_clips['test']} | {len(rows)} |

- Words ({len(words)}, {per_word} clips each): {", ".join(words)}.
- Splits are speaker-disjoint: `validation_list.txt` and `testing_list.txt` list the
  held-out clips, everything else is training.
- A speaker is one combination of English accent, voice variant, rate
  ({RATE_WPM[0]}-{RATE_WPM[1]} words/min), pitch ({PITCH[0]}-{PITCH[1]}) and pitch range
  ({PITCH_RANGE[0]}-{PITCH_RANGE[1]}) on eSpeak's 0-100 scales; its id is the first 8 hex digits
  of the SHA-1 of that combination. `speakers.csv` lists them.
- Accents: {", ".join(langs)}.
- Variants: {", ".join(variants)} (`-` = the accent's own voice).
- A speaker says a word 1-4 times; each time the rate varies by x0.9-1.1, the pitch by +-5 and
  the range by +-8.
- Each clip holds the whole word (words too long for 1 s are said faster, never cut) at a random
  position with {MARGIN * 1000:.0f} ms clear at both ends; speech level -32 to -16 dBFS RMS.
  Effects: 25 % a synthetic room (RT60 0.15-0.7 s), 12 % telephone band (300-3400 Hz), 12 %
  low-pass (2.5-5.5 kHz), 50 % white/pink/brown noise at 20-45 dB SNR (the rest a floor 50-65
  dB down). `clips.csv` gives each clip's speaker, split, word start/end (s) and effects.
- `{BACKGROUND_DIR}/`: {", ".join(BACKGROUND_FILES)};
  {BACKGROUND_SECONDS:.0f} s each at -20 dBFS RMS. Babble is {BABBLE_TALKERS} overlapping eSpeak
  talkers saying random non-keyword words, band-limited to 80-4000 Hz.
"""
    (root / "README.md").write_text(text)


# ----------------------------------------------------------------------------- default set
def default_dataset_dir() -> Path:
    """$KWSKIT_HOME/synth-default (KWSKIT_HOME defaults to ~/.cache/kwskit)."""
    home = os.environ.get("KWSKIT_HOME") or os.path.join("~", ".cache", "kwskit")
    return Path(home).expanduser() / "synth-default"


def ensure_default_dataset(quiet: bool = False) -> Path:
    """The default synthetic data set, built first (under 2 min) if it is not complete yet."""
    out = default_dataset_dir()
    params = _params(list(DEFAULT_WORDS), DEFAULT_PER_WORD, 0)
    if _same(_read_marker(out), params):
        return out
    if out.exists() and not out.is_dir():
        raise KwsError(f"{out}: exists and is not a folder (set KWSKIT_HOME elsewhere)")
    if not quiet:
        print(f"kwskit: building the default synthetic data set in {out} (once, < 1 min)",
              file=sys.stderr)
    try:
        summary = synthesize_dataset(out, list(DEFAULT_WORDS), DEFAULT_PER_WORD, 0, None,
                                     quiet=quiet, replace=True)
    except OSError:
        if _same(_read_marker(out), params):  # another process finished the same build first
            return out
        raise
    if not quiet:
        print(f"kwskit: {summary}", file=sys.stderr)
    return out
