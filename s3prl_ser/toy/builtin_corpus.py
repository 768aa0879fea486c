"""Deterministic synthetic emotional speech corpus in the raw IEMOCAP release layout.

The corpus is the default data for demos and CI: 5 sessions x 2 speakers, a
few hundred short utterances rendered with espeak-ng (formant synthesis) and
sox, labelled like IEMOCAP (neu, hap, exc, ang, sad plus fru/sur/xxx
distractors that recipes must drop). Emotion is carried only by prosody and
voice quality -- pitch level and range, speaking rate, loudness, spectral
tilt, breathiness, roughness, stress -- each scaled by a random per-utterance
intensity and jittered, so classes overlap. The sentence text is drawn
independently of the emotion. Sessions differ by room (reverb, noise floor)
and speakers by voice and microphone colouration, so leave-one-session-out
evaluation is not trivial.

Continuous attributes on IEMOCAP's 1-5 scale are read off each utterance's own
prosody (:func:`_attributes`): arousal rises with loudness, pitch range, pitch
and speaking rate; valence with pitch range and pitch and falls with roughness,
overdrive and breathiness; dominance rises with loudness, roughness and stress
and falls with pitch. They vary continuously within each class (the random
intensity and jitter) and carry a little annotation noise. The summary line of
each ``EmoEvaluation`` turn holds them as ``[V, A, D]``; the two evaluators'
``A-E`` lines are integer ratings of them, as IEMOCAP's raters give.

Everything random comes from one ``numpy.random.Generator(seed)``, drawn in a
fixed order before any audio is rendered, and sox runs without dither, so the
same seed and tool versions give byte-identical files. The annotation noise of
the attributes comes from a second generator (``[seed, 1]``), so the audio and
the categories are those the first generator alone gives.

:func:`write_msp_podcast_layout` lays the same utterances out as an MSP-Podcast release
(``Audios/``, ``Labels/labels_consensus.csv`` with ``EmoAct``/``EmoVal``/``EmoDom`` on 1-7,
speaker-disjoint ``Train``/``Development``/``Test1``), so the MSP-Podcast path runs end to end.

Command line: ``python -m s3prl_ser.cli.builtin_corpus [ROOT] [--seed N]
[--utterances-per-speaker N] [--msp-podcast-layout OUT]`` (:mod:`s3prl_ser.cli.builtin_corpus`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from s3prl_ser import fileio

__all__ = [
    "BuiltinCorpusError",
    "default_corpus_dir",
    "generate_corpus",
    "load_manifest",
    "write_msp_podcast_layout",
]

FORMAT_VERSION = 2  # 2: attributes read off the prosody (the audio is version 1's)
GENERATOR = "s3prl_ser.toy.builtin_corpus"
MANIFEST_NAME = "builtin_corpus.json"
SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 0.8, 2.5
LABELS = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "xxx")
DISTRACTORS = ("fru", "sur", "xxx")

SENTENCES = (
    "Excuse me.",
    "I left the keys on the table.",
    "The bus comes at nine.",
    "She called me this morning.",
    "We need to talk about it.",
    "Where did you put the box?",
    "It was raining all day.",
    "I will be there tomorrow.",
    "He bought a new car.",
    "The door was open.",
    "Can you pass the salt?",
    "They moved to another city.",
    "My brother works downtown.",
    "The meeting is on Friday.",
    "I saw the letter yesterday.",
    "Let me think about that.",
    "The shop closes at six.",
    "You can sit over there.",
    "I have read that book.",
    "This is the last one.",
    "We had dinner at home.",
    "Turn left at the corner.",
    "The train was late again.",
    "I put it in the drawer.",
    "She is waiting outside.",
    "That is what he said.",
    "The phone is on the desk.",
    "I know where it is.",
    "We walked to the station.",
    "The coffee is still warm.",
    "He wrote down the number.",
    "I will call you later.",
    "They sold the old house.",
    "It is on the second floor.",
    "Tell me what happened.",
    "The window faces the street.",
    "I found it in the garden.",
    "We leave in ten minutes.",
    "Nobody told me that.",
    "Okay, I understand.",
)


class BuiltinCorpusError(RuntimeError):
    """Raised when the corpus cannot be generated or ROOT holds something else."""


@dataclasses.dataclass(frozen=True)
class _Speaker:
    """A synthetic actor: espeak-ng language and base variant (formants) plus
    pitch (base and top, Hz), speaking rate (words/min) and recording level."""

    code: str  # e.g. "Ses01F"
    language: str
    variant: str
    f0_base: float
    f0_top: float
    wpm: float
    level_db: float


_SPEAKERS = (
    _Speaker("Ses01F", "en-us", "f1", 165, 250, 170, -27),
    _Speaker("Ses01M", "en-us", "m1", 90, 135, 175, -26),
    _Speaker("Ses02F", "en-us", "f2", 185, 280, 180, -28),
    _Speaker("Ses02M", "en", "m3", 100, 150, 165, -27),
    _Speaker("Ses03F", "en-us-nyc", "f3", 150, 235, 175, -26),
    _Speaker("Ses03M", "en-us", "m2", 82, 120, 185, -28),
    _Speaker("Ses04F", "en-gb-x-rp", "f4", 175, 265, 165, -27),
    _Speaker("Ses04M", "en-us", "m4", 95, 145, 170, -26),
    _Speaker("Ses05F", "en-us", "f5", 195, 300, 185, -28),
    _Speaker("Ses05M", "en-us", "m6", 110, 160, 160, -27),
)

# Variant-file keys we set per utterance; the base variant keeps only its
# timbre (formants, echo, consonant strength).
_VARIANT_KEYS_KEPT = ("formant", "echo", "consonants")


@dataclasses.dataclass(frozen=True)
class _Prosody:
    """Prosodic and voice-quality settings, relative to the speaker's neutral voice."""

    f0: float  # multiplier of the base pitch
    f0_range: float  # multiplier of the pitch range
    rate: float  # multiplier of the speaking rate
    gain_db: float  # loudness relative to the speaker's level
    brightness: float  # -1 (dark, lax) .. 1 (bright, tense) spectral tilt
    breath: float  # 0 .. 1 breathiness
    roughness: float  # 0 .. 7 creak
    emphasis: float  # -1 (flat) .. 1 (strong) stress contrast
    drive_db: float  # sox overdrive, 0 = clean
    word_gap: float  # extra pause between words, 10 ms units

    def mix(self, other: _Prosody, weight: float) -> _Prosody:
        """Interpolate (or extrapolate) from self towards other."""
        return _Prosody(*(a + weight * (b - a) for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


_PROSODY = {
    "neu": _Prosody(1.00, 1.00, 1.00, 0.0, 0.0, 0.10, 2, 0.0, 0, 0),
    "hap": _Prosody(1.14, 1.60, 1.07, 2.0, 0.4, 0.05, 1, 0.4, 0, 0),
    "exc": _Prosody(1.22, 1.90, 1.13, 3.5, 0.5, 0.05, 1, 0.6, 2, 0),
    "ang": _Prosody(1.10, 1.30, 1.10, 5.0, 0.8, 0.00, 5, 1.0, 8, 0),
    "sad": _Prosody(0.90, 0.45, 0.80, -5.0, -0.7, 0.60, 2, -0.8, 0, 2),
    "fru": _Prosody(1.03, 0.90, 1.00, 2.0, 0.4, 0.20, 4, 0.3, 3, 0),
    "sur": _Prosody(1.20, 2.20, 0.95, 2.0, 0.2, 0.10, 1, 0.5, 0, 0),
}
# Per-utterance standard deviation of each field, on top of the random intensity.
_JITTER = _Prosody(0.05, 0.20, 0.06, 2.0, 0.25, 0.10, 1.0, 0.25, 2.0, 0.6)

_CATEGORY_NAMES = {
    "neu": "Neutral",
    "hap": "Happiness",
    "exc": "Excited",
    "ang": "Anger",
    "sad": "Sadness",
    "fru": "Frustration",
    "sur": "Surprise",
}
ATTRIBUTE_NOISE = 0.15  # sd of the annotation noise on the prosody's attributes (1-5 scale)
RATER_NOISE = 0.6  # sd of one evaluator's rating around them, before rounding


@dataclasses.dataclass(frozen=True)
class _Room:
    """Session recording conditions."""

    reverberance: float  # sox reverb %, 0..100
    room_scale: float  # sox reverb %, 0..100
    wet_db: float
    noise_db: float  # noise floor, dBFS


@dataclasses.dataclass(frozen=True)
class _Utterance:
    """Everything needed to render and label one turn, drawn before rendering."""

    name: str
    session: int
    dialog: str
    speaker: _Speaker
    label: str
    text: str
    prosody: _Prosody
    mic: tuple[float, float, float]  # highpass Hz, EQ centre Hz, EQ gain dB
    room: _Room
    lead_s: float  # silence before speech
    trail_s: float  # silence after speech
    gap_s: float  # pause since the previous turn of the dialog
    noise_seed: int
    vad: tuple[float, float, float]  # valence, arousal (activation), dominance on 1..5
    evaluator_lines: tuple[str, ...]


def default_corpus_dir() -> pathlib.Path:
    """Where the corpus lives by default: ``$S3PRL_SER_DATA/builtin_iemocap``,
    else ``~/.cache/s3prl_ser/builtin_iemocap``."""
    base = os.environ.get("S3PRL_SER_DATA")
    if base:
        return pathlib.Path(base).expanduser() / "builtin_iemocap"
    return pathlib.Path.home() / ".cache" / "s3prl_ser" / "builtin_iemocap"


def load_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a finished corpus at ``root``, or None if there is none."""
    path = pathlib.Path(root) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def generate_corpus(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    utterances_per_speaker: int = 28,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write the synthetic corpus to ``root`` in the raw IEMOCAP layout and return ``root``.

    If ``root`` already holds a finished corpus generated with the same
    parameters, it is returned untouched. If it holds anything else (another
    seed, an unfinished or foreign directory), a :class:`BuiltinCorpusError`
    is raised unless ``overwrite`` is true, in which case it is replaced.
    The corpus is built in a temporary sibling directory and renamed into
    place, and its manifest is written last, so ``root`` is never left
    half-written.

    Requires the ``espeak-ng`` and ``sox`` executables.
    """
    if utterances_per_speaker < 5:
        raise ValueError("utterances_per_speaker must be >= 5 (4 classes and a distractor)")
    root = pathlib.Path(root).expanduser().absolute()
    params = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "utterances_per_speaker": utterances_per_speaker,
    }

    manifest = load_manifest(root)
    if not overwrite and manifest is not None and manifest.get("params") == params:
        return root
    if manifest is not None and manifest.get("generator") == GENERATOR:
        older = dict(manifest.get("params") or {}, format_version=FORMAT_VERSION) == params
        overwrite = overwrite or older  # the same corpus from an earlier version of this generator
    if root.exists() and not root.is_dir():
        raise BuiltinCorpusError(f"{root} exists and is not a directory")
    if not overwrite and root.exists() and any(root.iterdir()):
        found = f"a corpus with parameters {manifest.get('params')}" if manifest else "no finished corpus"
        raise BuiltinCorpusError(
            f"{root} holds {found}, not one with {params}; "
            "pass overwrite=True (--overwrite) or choose another directory"
        )

    tools = _tool_versions()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the corpus should be readable like any output
    try:
        utterances = _plan(seed, utterances_per_speaker)
        durations = _render_all(utterances, staging, tools["data_dir"])
        _write_labels(utterances, durations, staging)
        counts = {}
        for session in range(1, 6):
            found = Counter(u.label for u in utterances if u.session == session)
            counts[f"Session{session}"] = {label: found[label] for label in LABELS}
        manifest = {
            "generator": GENERATOR,
            "params": params,
            "n_utterances": len(utterances),
            "total_seconds": round(sum(durations.values()), 3),
            "counts": counts,
            "tools": {"espeak-ng": tools["espeak-ng"], "sox": tools["sox"], "numpy": np.__version__},
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(staging, root, params)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


# MSP-Podcast's consensus codes for the built-in labels (fru has none: "other"; xxx: no agreement).
MSP_CODES = {"neu": "N", "hap": "H", "exc": "H", "ang": "A", "sad": "S", "sur": "U", "fru": "O", "xxx": "X"}
MSP_SPLITS = {1: "Train", 2: "Train", 3: "Train", 4: "Development", 5: "Test1"}  # by session: speaker-disjoint


def write_msp_podcast_layout(root: str | os.PathLike, out: str | os.PathLike) -> pathlib.Path:
    """Lay the finished built-in corpus at ``root`` out as an MSP-Podcast release at ``out``:
    ``out/Audios/<utterance>.wav`` (hard links where the file system allows, else copies) and
    ``out/Labels/labels_consensus.csv`` (``FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID,
    Gender, Split_Set``). The attributes are the corpus's, mapped from 1-5 to MSP-Podcast's 1-7
    (``1 + (y - 1) * 1.5``); sessions 1-3 are ``Train``, 4 ``Development``, 5 ``Test1``.
    Returns ``out``.

    Raises:
        BuiltinCorpusError: ``root`` holds no finished corpus, or ``out`` is not empty.
    """
    root, out = pathlib.Path(root), pathlib.Path(out)
    manifest = load_manifest(root)
    if manifest is None or manifest.get("generator") != GENERATOR:
        raise BuiltinCorpusError(f"{root}: no finished built-in corpus (generate it first)")
    if out.exists() and any(out.iterdir()):
        raise BuiltinCorpusError(f"{out}: not empty; choose a new directory for the MSP-Podcast layout")
    params = manifest["params"]
    (out / "Audios").mkdir(parents=True, exist_ok=True)
    (out / "Labels").mkdir(exist_ok=True)
    speakers = {s.code: str(i) for i, s in enumerate(_SPEAKERS, 1)}
    lines = ["FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"]
    for u in _plan(params["seed"], params["utterances_per_speaker"]):
        source = root / f"Session{u.session}" / "sentences" / "wav" / u.dialog / f"{u.name}.wav"
        target = out / "Audios" / f"{u.name}.wav"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        valence, arousal, dominance = (round(1 + (y - 1) * 1.5, 4) for y in u.vad)
        gender = "Female" if u.speaker.code.endswith("F") else "Male"
        lines.append(
            f"{target.name},{MSP_CODES[u.label]},{arousal},{valence},{dominance},{speakers[u.speaker.code]},"
            f"{gender},{MSP_SPLITS[u.session]}"
        )
    fileio.atomic_write_text(out / "Labels" / "labels_consensus.csv", "\n".join(lines) + "\n")
    return out


def _tool_versions() -> dict[str, str]:
    """Versions of espeak-ng and sox and the espeak-ng data directory; raises if missing."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise BuiltinCorpusError(
                f"'{tool}' not found on PATH; it is needed to synthesise the built-in corpus. "
                f"Install it with: apt-get install {tool}"
            )
    espeak = _run(["espeak-ng", "--version"]).decode().strip()
    match = re.search(r"Data at:\s*(.+)$", espeak)
    if match is None:
        raise BuiltinCorpusError(f"cannot find the espeak-ng data directory in {espeak!r}")
    sox = _run(["sox", "--version"]).decode().strip()
    return {"espeak-ng": espeak.split("Data at:")[0].strip(), "sox": sox, "data_dir": match.group(1).strip()}


def _move_into_place(staging: pathlib.Path, root: pathlib.Path, params: dict) -> None:
    """Atomically make ``staging`` the corpus at ``root``, replacing what is there."""
    if root.exists() and any(root.iterdir()):
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
        fileio.replace(root, old)
        fileio.replace(staging, root)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        fileio.replace(staging, root)  # also replaces an empty directory
    except OSError:
        # Another process finished the same corpus first: that one is as good.
        manifest = load_manifest(root)
        if manifest is None or manifest.get("params") != params:
            raise


# ---------------------------------------------------------------- planning


def _plan(seed: int, per_speaker: int) -> list[_Utterance]:
    """Draw every random choice of the corpus, in a fixed order."""
    rng = np.random.default_rng(seed)
    annotation = np.random.default_rng([seed, 1])  # apart, so `rng` draws what it drew before attributes
    utterances = []
    for session in range(1, 6):
        room = _Room(
            reverberance=rng.uniform(5, 40),
            room_scale=rng.uniform(15, 70),
            wet_db=rng.uniform(-10, -4),
            noise_db=rng.uniform(-66, -50),
        )
        speakers = {s.code[-1]: s for s in _SPEAKERS if s.code.startswith(f"Ses{session:02d}")}
        mics = {g: (rng.uniform(50, 140), rng.uniform(700, 4000), rng.uniform(-5, 5)) for g in "FM"}
        dialogs = [f"Ses{session:02d}{d}" for d in ("F_impro01", "M_impro01", "F_script01_1", "M_script02_1")]
        # Each speaker's shuffled labels, split over the dialogs of the session.
        turns_by_dialog: list[list[tuple[str, str]]] = [[] for _ in dialogs]
        for gender, speaker in speakers.items():
            labels = _speaker_labels(rng, per_speaker, _SPEAKERS.index(speaker))
            for d, chunk in enumerate(np.array_split(rng.permutation(labels), len(dialogs))):
                turns_by_dialog[d] += [(gender, str(label)) for label in chunk]
        for dialog, turns in zip(dialogs, turns_by_dialog):
            counters = Counter()
            for k, i in enumerate(rng.permutation(len(turns))):
                gender, label = turns[i]
                name = f"{dialog}_{gender}{counters[gender]:03d}"
                counters[gender] += 1
                categories, rater_noise = _evaluator_draws(rng, label)
                text = SENTENCES[rng.integers(len(SENTENCES))]
                prosody = _realise(rng, label)
                vad = _attributes(prosody, annotation)
                utterances.append(
                    _Utterance(
                        name=name,
                        session=session,
                        dialog=dialog,
                        speaker=speakers[gender],
                        label=label,
                        text=text,
                        prosody=prosody,
                        mic=mics[gender],
                        room=room,
                        lead_s=rng.uniform(0.08, 0.3),
                        trail_s=rng.uniform(0.1, 0.35),
                        gap_s=rng.uniform(1.5, 4.0) if k == 0 else rng.uniform(0.2, 2.0),
                        noise_seed=int(rng.integers(2**32)),
                        vad=vad,
                        evaluator_lines=_evaluator_lines(categories, vad, rater_noise),
                    )
                )
    return utterances


def _speaker_labels(rng: np.random.Generator, n: int, speaker_index: int) -> list[str]:
    """n labels: ~10% distractors, the rest balanced over neu/hap+exc/ang/sad."""
    n_distractors = max(1, round(0.1 * n))
    core = n - n_distractors
    counts = np.full(4, core // 4)
    counts[rng.choice(4, core % 4, replace=False)] += 1
    n_neu, n_happy, n_ang, n_sad = (int(c) for c in counts)
    n_exc = round(0.4 * n_happy)
    # Rotate the distractor kinds over speakers so that all of them occur.
    distractors = [DISTRACTORS[(speaker_index * n_distractors + i) % 3] for i in range(n_distractors)]
    return (
        ["neu"] * n_neu
        + ["hap"] * (n_happy - n_exc)
        + ["exc"] * n_exc
        + ["ang"] * n_ang
        + ["sad"] * n_sad
        + distractors
    )


def _realise(rng: np.random.Generator, label: str) -> _Prosody:
    """Per-utterance prosody: the emotion's preset at a random intensity, jittered."""
    if label == "xxx":  # evaluators disagreed: a blend of two emotions
        a, b = rng.choice(["neu", "hap", "ang", "sad"], 2, replace=False)
        target = _PROSODY[a].mix(_PROSODY[b], 0.5)
    else:
        target = _PROSODY[label]
    intensity = float(np.clip(rng.normal(0.85, 0.3), 0.15, 1.5))
    mean = _PROSODY["neu"].mix(target, intensity)
    p = _Prosody(*(rng.normal(m, s) for m, s in zip(dataclasses.astuple(mean), dataclasses.astuple(_JITTER))))
    return dataclasses.replace(
        p,
        f0=float(np.clip(p.f0, 0.75, 1.45)),
        f0_range=float(np.clip(p.f0_range, 0.2, 2.8)),
        rate=float(np.clip(p.rate, 0.65, 1.4)),
        brightness=float(np.clip(p.brightness, -1, 1)),
        breath=float(np.clip(p.breath, 0, 1)),
        roughness=float(np.clip(round(p.roughness), 0, 7)),
        emphasis=float(np.clip(p.emphasis, -1, 1)),
        drive_db=max(0.0, p.drive_db),
        word_gap=float(max(0, round(p.word_gap))),
    )


def _attributes(p: _Prosody, annotation: np.random.Generator) -> tuple[float, float, float]:
    """Valence, arousal, dominance (1..5, 4 decimals) that the prosody ``p`` carries, plus
    annotation noise: linear in the settings the renderer realises (loudness is exactly
    ``gain_db`` above the speaker's level), so each is measurable in the audio. Class means
    (V, A, D) of the default corpus: neu (3.0, 2.8, 2.9), hap (3.8, 3.7, 3.1), ang (2.0, 4.0,
    4.1), sad (2.0, 1.7, 2.2), each with a standard deviation of about 0.4 within the class."""
    valence = (
        3.0
        + 0.8 * (p.f0_range - 1)
        + 2.0 * (p.f0 - 1)
        - 0.3 * (p.roughness - 2)
        - 0.12 * p.drive_db
        - 1.2 * (p.breath - 0.1)
    )
    arousal = 2.9 + 0.2 * p.gain_db + 0.5 * (p.f0_range - 1) + 1.5 * (p.rate - 1) + 1.5 * (p.f0 - 1)
    dominance = 3.0 + 0.2 * p.gain_db - 2.0 * (p.f0 - 1) + 0.15 * (p.roughness - 2) + 0.3 * p.emphasis
    noisy = np.array([valence, arousal, dominance]) + annotation.normal(0, ATTRIBUTE_NOISE, 3)
    # A smooth squash into (1, 5): monotonic, and no pile of values at the ends as clipping would make.
    return tuple(round(float(x), 4) for x in 3 + 2 * np.tanh((noisy - 3) / 2))


def _evaluator_draws(rng: np.random.Generator, label: str) -> tuple[list[str], np.ndarray]:
    """The three evaluators' categories and two evaluators' standard-normal rating noise (2, 3)."""
    if label == "xxx":
        categories = list(rng.choice(list(_CATEGORY_NAMES.values()), 3, replace=False))
    else:
        other = rng.choice([c for c in _CATEGORY_NAMES.values() if c != _CATEGORY_NAMES[label]])
        categories = [_CATEGORY_NAMES[label]] * 2 + [other if rng.random() < 0.3 else _CATEGORY_NAMES[label]]
    return categories, rng.standard_normal((2, 3))


def _evaluator_lines(categories: list[str], vad: tuple[float, float, float], noise: np.ndarray) -> tuple[str, ...]:
    """IEMOCAP-style evaluator lines: 3 categorical, 2 dimensional (integer ratings of ``vad``)."""
    lines = [f"C-E{i}:\t{c};\t()" for i, c in enumerate(categories, 1)]
    ratings = np.clip(np.rint(np.array(vad) + RATER_NOISE * noise), 1, 5).astype(int)
    lines += [f"A-E{i}:\tval {v}; act {a}; dom  {d};\t()" for i, (v, a, d) in enumerate(ratings, 1)]
    return tuple(lines)


# ---------------------------------------------------------------- rendering


def _render_all(utterances: list[_Utterance], root: pathlib.Path, data_dir: str) -> dict[str, float]:
    """Render all wavs concurrently; return each utterance's duration in seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        for u in utterances:
            # One overlay per utterance: espeak-ng lists every variant of its folder and stops at 349.
            variants = _espeak_overlay(pathlib.Path(data_dir), scratch / u.name)
            base = (pathlib.Path(data_dir) / "voices" / "!v" / u.speaker.variant).read_text()
            (variants / u.name).write_text(_variant_file(u, base))
            (root / f"Session{u.session}" / "sentences" / "wav" / u.dialog).mkdir(parents=True, exist_ok=True)
        # Work happens in espeak-ng/sox subprocesses, so threads suffice.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            lengths = pool.map(lambda u: _render(u, root, scratch), utterances)
            return {u.name: n / SAMPLE_RATE for u, n in zip(utterances, lengths)}


def _espeak_overlay(data_dir: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
    """An espeak-ng data directory that links the installed data but has its own
    voice-variant folder, since espeak-ng only loads variants from there.
    Returns that folder."""
    overlay = scratch / "espeak-ng-data"
    variants = overlay / "voices" / "!v"
    variants.mkdir(parents=True)
    for entry in data_dir.iterdir():
        if entry.name != "voices":
            (overlay / entry.name).symlink_to(entry)
    return variants


def _variant_file(u: _Utterance, base_variant: str) -> str:
    """espeak-ng voice variant for one utterance: speaker timbre plus emotional prosody."""
    s, p = u.speaker, u.prosody
    f0 = s.f0_base * p.f0
    top = f0 + (s.f0_top - s.f0_base) * p.f0_range
    b, breath = p.brightness, p.breath
    kept = [line.strip() for line in base_variant.splitlines() if line.strip().startswith(_VARIANT_KEYS_KEPT)]
    return "\n".join(
        [
            "language variant",
            f"name {u.name}",
            *kept,
            f"pitch {round(f0)} {round(top)}",
            f"tone 600 170 1200 {round(135 + 25 * b)} 2000 {round(110 + 45 * b)}",
            "breath 0 " + " ".join(str(round(w * breath)) for w in (15, 20, 20, 15, 10, 5, 0)),
            f"voicing {round(100 - 30 * breath)}",
            f"roughness {round(p.roughness)}",
            f"stressAmp 16 16 20 20 20 24 {round(24 + 8 * p.emphasis)} {round(22 + 10 * p.emphasis)}",
            f"stressAdd 0 0 0 0 0 0 {round(30 * p.emphasis)} {round(40 * p.emphasis)}",
            "",
        ]
    )


def _render(u: _Utterance, root: pathlib.Path, scratch: pathlib.Path) -> int:
    """Synthesise, process and write one utterance; return its length in samples."""
    raw = scratch / f"{u.name}.wav"
    _run(
        [
            "espeak-ng",
            f"--path={scratch / u.name}",
            "-v",
            f"{u.speaker.language}+{u.name}",
            "-s",
            str(round(u.speaker.wpm * u.prosody.rate)),
            "-g",
            str(round(u.prosody.word_gap)),
            "-z",
            "-w",
            str(raw),
            u.text,
        ]
    )
    # Squeeze the speech only if it would not fit the utterance length limit.
    speech_budget = MAX_SECONDS - u.lead_s - u.trail_s - 0.05
    tempo = max(1.0, sf.info(str(raw)).duration / speech_budget)
    hp, eq_hz, eq_db = u.mic
    effects = [
        *(["tempo", "-s", f"{tempo:.4f}"] if tempo > 1 else []),
        *(["overdrive", f"{u.prosody.drive_db:.2f}", "20"] if u.prosody.drive_db >= 0.5 else []),
        "highpass",
        f"{hp:.1f}",
        "equalizer",
        f"{eq_hz:.1f}",
        "1.2q",
        f"{eq_db:.2f}",
        "reverb",
        f"{u.room.reverberance:.1f}",
        "50",
        f"{u.room.room_scale:.1f}",
        "100",
        "0",
        f"{u.room.wet_db:.2f}",
    ]
    # -D: no dither, which would otherwise add unseeded noise.
    out = _run(
        [
            "sox",
            "-D",
            "-V1",
            str(raw),
            "-t",
            "raw",
            "-e",
            "floating-point",
            "-b",
            "32",
            "-c",
            "1",
            "-r",
            str(SAMPLE_RATE),
            "-",
            *effects,
        ]
    )
    speech = np.frombuffer(out, dtype=np.float32).astype(np.float64)
    rms = np.sqrt(np.mean(speech**2))
    speech *= 10 ** ((u.speaker.level_db + u.prosody.gain_db) / 20) / rms
    speech *= min(1.0, 0.95 / np.abs(speech).max())  # the recording limiter

    lead = round(u.lead_s * SAMPLE_RATE)
    wanted = lead + len(speech) + u.trail_s * SAMPLE_RATE
    total = int(np.clip(wanted, MIN_SECONDS * SAMPLE_RATE, MAX_SECONDS * SAMPLE_RATE))
    audio = np.zeros(total)
    audio[lead : lead + len(speech)] = speech[: total - lead]
    noise = np.random.default_rng(u.noise_seed).standard_normal(total)
    audio += np.convolve(noise, [0.6, 0.3, 0.1], mode="same") * 10 ** (u.room.noise_db / 20)

    path = root / f"Session{u.session}" / "sentences" / "wav" / u.dialog / f"{u.name}.wav"
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return total


def _run(cmd: list[str]) -> bytes:
    """Run a tool and return its stdout, turning failures into a readable error."""
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise BuiltinCorpusError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


# ---------------------------------------------------------------- labels


def _write_labels(utterances: list[_Utterance], durations: dict[str, float], root: pathlib.Path) -> None:
    """Write EmoEvaluation and transcription files, turn times laid end to end per dialog."""
    by_dialog: dict[str, list[_Utterance]] = {}
    for u in utterances:
        by_dialog.setdefault(u.dialog, []).append(u)
    for dialog, turns in by_dialog.items():
        session_dir = root / f"Session{turns[0].session}" / "dialog"
        emo = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        transcript = []
        end = 0.0
        for u in turns:
            start = end + u.gap_s
            end = start + durations[u.name]
            v, a, d = u.vad
            emo.append(f"[{start:.4f} - {end:.4f}]\t{u.name}\t{u.label}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
            emo += [*u.evaluator_lines, ""]
            transcript.append(f"{u.name} [{start:08.4f}-{end:08.4f}]: {u.text}")
        for sub, lines in (("EmoEvaluation", emo), ("transcriptions", transcript)):
            (session_dir / sub).mkdir(parents=True, exist_ok=True)
            (session_dir / sub / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
