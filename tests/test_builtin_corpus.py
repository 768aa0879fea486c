"""Tests of the synthetic IEMOCAP-layout corpus generator (needs espeak-ng and sox)."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from s3prl_ser.toy.builtin_corpus import (
    BuiltinCorpusError,
    default_corpus_dir,
    generate_corpus,
    load_manifest,
)

PER_SPEAKER = 8  # 80 utterances: enough for every class per speaker, ~1 s to render
MERGE = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
TURN = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(\w+)\t\[[\d., ]+\]$")

needs_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are required to synthesise the corpus",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are required to synthesise the corpus")
    root = tmp_path_factory.mktemp("builtin") / "iemocap"
    return generate_corpus(root, seed=0, utterances_per_speaker=PER_SPEAKER)


def turns(root: Path) -> list[dict]:
    """Every turn of every EmoEvaluation file, in file order."""
    found = []
    for path in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        lines = path.read_text().splitlines()
        assert lines[:2] == ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for line in lines:
            if line.startswith("["):
                match = TURN.match(line)
                assert match, line
                start, end, name, code = match.groups()
                found.append(
                    {
                        "session": path.parts[-4],
                        "dialog": path.stem,
                        "name": name,
                        "code": code,
                        "start": float(start),
                        "end": float(end),
                    }
                )
    return found


def wav_path(root: Path, turn: dict) -> Path:
    return root / turn["session"] / "sentences" / "wav" / turn["dialog"] / f"{turn['name']}.wav"


def test_layout_and_names(corpus):
    assert sorted(p.name for p in corpus.glob("Session*")) == [f"Session{n}" for n in range(1, 6)]
    for n in range(1, 6):
        session = corpus / f"Session{n}"
        dialogs = sorted(p.stem for p in (session / "dialog" / "EmoEvaluation").glob("*.txt"))
        assert dialogs and all(re.fullmatch(rf"Ses0{n}[FM]_(impro\d\d|script\d\d_\d)", d) for d in dialogs)
        assert dialogs == sorted(p.stem for p in (session / "dialog" / "transcriptions").glob("*.txt"))
        assert dialogs == sorted(p.name for p in (session / "sentences" / "wav").iterdir())
    all_turns = turns(corpus)
    assert len(all_turns) == 10 * PER_SPEAKER == load_manifest(corpus)["n_utterances"]
    for turn in all_turns:
        assert re.fullmatch(rf"{turn['dialog']}_[FM]\d{{3}}", turn["name"])


def test_every_turn_has_a_matching_wav(corpus):
    by_dialog = defaultdict(list)
    for turn in turns(corpus):
        info = sf.info(wav_path(corpus, turn))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.8 <= info.duration <= 2.5
        assert abs(info.duration - (turn["end"] - turn["start"])) < 0.01
        by_dialog[turn["dialog"]].append(turn)
    for dialog_turns in by_dialog.values():  # times run forward, turns do not overlap
        ends = [t["end"] for t in dialog_turns]
        starts = [t["start"] for t in dialog_turns]
        assert all(s >= e for s, e in zip(starts[1:], ends[:-1])) and starts[0] > 0


def test_transcripts_cover_every_turn(corpus):
    listed = {}
    for path in corpus.glob("Session*/dialog/transcriptions/*.txt"):
        for line in path.read_text().splitlines():
            match = re.fullmatch(r"(\S+) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.+)", line)
            assert match, line
            listed[match[1]] = (float(match[2]), float(match[3]), match[4])
    for turn in turns(corpus):
        start, end, text = listed.pop(turn["name"])
        assert (start, end) == (turn["start"], turn["end"]) and text.strip()
    assert not listed


def test_labels_balanced_with_distractors(corpus):
    all_turns = turns(corpus)
    codes = {t["code"] for t in all_turns}
    assert {"fru", "sur", "xxx"} <= codes <= {"neu", "hap", "exc", "ang", "sad", "fru", "sur", "xxx"}
    classes = defaultdict(set)
    for t in all_turns:
        if t["code"] in MERGE:
            classes[t["session"], t["name"].split("_")[-1][0]].add(MERGE[t["code"]])
    assert len(classes) == 10  # 5 sessions x 2 speakers
    assert all(found == {"neu", "hap", "ang", "sad"} for found in classes.values())


def test_prepare_iemocap_reads_the_corpus(corpus):
    from s3prl_ser.data.corpora.iemocap import collect_session

    expected = sum(t["code"] in MERGE for t in turns(corpus) if t["session"] == "Session1")
    kept = collect_session(corpus, "Session1")
    assert len(kept) == expected and {u.label for u in kept} == {"neu", "hap", "ang", "sad"}


def test_reports_name_it_the_builtin_corpus_and_iemocap_stays_iemocap(corpus, mini_corpus, mini_meta, tmp_path):
    """Its protocol record (hence reports) names the synthetic corpus, not IEMOCAP; a real
    IEMOCAP layout (the mini corpus, without the generator's manifest) is still IEMOCAP."""
    import warnings

    from s3prl_ser.data.corpora.iemocap import prepare
    from s3prl_ser.data.emotion_dataset import BUILTIN_NAME, SESSION_CORPORA
    from s3prl_ser.data.fold_data import load_fold_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(corpus, tmp_path / "meta")
    data = load_fold_data({"root": str(corpus), "meta_data": str(tmp_path / "meta")}, "fold2", read_audio=False)
    assert data.protocol.corpus_name == BUILTIN_NAME == "builtin (synthetic IEMOCAP layout)"
    assert BUILTIN_NAME in SESSION_CORPORA  # its folds are sessions, as IEMOCAP's
    mini = load_fold_data({"root": str(mini_corpus), "meta_data": str(mini_meta)}, "fold2", read_audio=False)
    assert mini.protocol.corpus_name == "IEMOCAP"


def test_classes_differ_in_prosody(corpus):
    """Angry turns are louder and faster than sad ones on average: the labels are learnable."""
    texts = {}
    for path in corpus.glob("Session*/dialog/transcriptions/*.txt"):
        for line in path.read_text().splitlines():
            name, text = line.split(": ", 1)
            texts[name.split()[0]] = text
    features = defaultdict(list)
    for turn in turns(corpus):
        if turn["code"] in ("ang", "sad"):
            audio, _ = sf.read(wav_path(corpus, turn))
            rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
            features[turn["code"]].append((rms_db, (turn["end"] - turn["start"]) / len(texts[turn["name"]])))
    ang, sad = np.mean(features["ang"], axis=0), np.mean(features["sad"], axis=0)
    assert ang[0] > sad[0] + 3  # dB
    assert ang[1] < sad[1]  # seconds per character


def test_same_seed_is_byte_identical_other_seed_differs(corpus, tmp_path):
    again = generate_corpus(tmp_path / "again", seed=0, utterances_per_speaker=PER_SPEAKER)
    other = generate_corpus(tmp_path / "other", seed=1, utterances_per_speaker=PER_SPEAKER)
    files = [
        "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt",
        "Session3/dialog/transcriptions/Ses03M_script02_1.txt",
        *(str(wav_path(corpus, t).relative_to(corpus)) for t in turns(corpus)[::13]),
    ]
    for name in files:
        assert (corpus / name).read_bytes() == (again / name).read_bytes(), name
    assert any((corpus / name).read_bytes() != (other / name).read_bytes() for name in files)


def test_rerun_on_finished_corpus_is_a_noop(corpus):
    stamps = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}
    assert generate_corpus(corpus, seed=0, utterances_per_speaker=PER_SPEAKER) == corpus
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == stamps


def test_mismatching_or_foreign_root_raises(corpus, tmp_path):
    with pytest.raises(BuiltinCorpusError, match="overwrite"):
        generate_corpus(corpus, seed=1, utterances_per_speaker=PER_SPEAKER)
    with pytest.raises(BuiltinCorpusError, match="overwrite"):
        generate_corpus(corpus, seed=0, utterances_per_speaker=PER_SPEAKER + 1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a corpus")
    with pytest.raises(BuiltinCorpusError, match="no finished corpus"):
        generate_corpus(foreign, utterances_per_speaker=PER_SPEAKER)


@needs_tools
def test_overwrite_replaces_and_leaves_no_staging(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "stale.txt").write_text("left over")
    generate_corpus(root, seed=3, utterances_per_speaker=5, overwrite=True)
    assert not (root / "stale.txt").exists()
    assert load_manifest(root)["params"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_missing_tool_names_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuiltinCorpusError, match="apt-get install espeak-ng"):
        generate_corpus(tmp_path / "corpus", utterances_per_speaker=5)
    assert not (tmp_path / "corpus").exists()


def test_default_corpus_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("S3PRL_SER_DATA", str(tmp_path))
    assert default_corpus_dir() == tmp_path / "builtin_iemocap"
    monkeypatch.delenv("S3PRL_SER_DATA")
    assert default_corpus_dir() == Path.home() / ".cache" / "s3prl_ser" / "builtin_iemocap"


SUMMARY = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t\[([\d.]+), ([\d.]+), ([\d.]+)\]$")


def attributes(root: Path) -> dict[str, dict]:
    """Each turn's code, summary ``[V, A, D]`` and evaluator ratings, by name."""
    found = {}
    for path in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        for line in path.read_text().splitlines():
            if match := SUMMARY.match(line):
                name, code, v, a, d = match.groups()
                found[name] = {"code": code, "vad": (float(v), float(a), float(d)), "ratings": [], "path": path}
            elif line.startswith("A-E"):
                found[name]["ratings"].append([int(x) for x in re.findall(r"(?:val|act|dom)\s+(\d)", line)])
    return found


def spearman(x, y) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def test_attributes_are_carried_by_prosody_and_vary_within_classes(corpus):
    """Arousal and dominance follow the speech's measured loudness (RMS over its voiced frames),
    and each attribute varies within a class: regression cannot be a class-mean lookup."""
    turns_ = attributes(corpus)
    loudness, vad, codes = [], [], []
    for name, turn in turns_.items():
        audio, _ = sf.read(turn["path"].parents[2] / "sentences" / "wav" / turn["path"].stem / f"{name}.wav")
        frames = audio[: len(audio) // 400 * 400].reshape(-1, 400)
        energy = np.sqrt(np.mean(frames**2, axis=1))
        loudness.append(20 * np.log10(np.sqrt(np.mean(frames[energy > 0.05 * energy.max()] ** 2))))
        vad.append(turn["vad"])
        codes.append(turn["code"])
        assert len(turn["ratings"]) == 2 and all(
            abs(r - x) <= 2.5 for rating in turn["ratings"] for r, x in zip(rating, turn["vad"])
        )
    vad, codes = np.array(vad), np.array(codes)
    assert ((vad >= 1) & (vad <= 5)).all() and len(np.unique(vad[:, 1])) > 0.9 * len(vad)  # continuous
    assert spearman(loudness, vad[:, 1]) > 0.7 and spearman(loudness, vad[:, 2]) > 0.6
    for code in ("neu", "ang", "sad"):
        within = codes == code
        assert vad[within].std(axis=0).min() > 0.2, code
        assert spearman(np.array(loudness)[within], vad[within, 1]) > 0.3, code
    means = {code: vad[codes == code].mean(axis=0) for code in ("hap", "ang", "sad")}
    assert means["hap"][0] > means["ang"][0] + 1 and means["hap"][0] > means["sad"][0] + 1  # valence
    assert means["ang"][1] > means["sad"][1] + 1.5  # arousal


def test_attributes_reach_the_meta_data_and_the_msp_podcast_layout(corpus, tmp_path):
    import warnings

    from s3prl_ser.data.corpora import msp_podcast
    from s3prl_ser.data.corpora.iemocap import prepare
    from s3prl_ser.toy.builtin_corpus import write_msp_podcast_layout

    truth = attributes(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(corpus, tmp_path / "meta")
    meta = json.loads((tmp_path / "meta" / "Session2" / "test_meta_data.json").read_text())
    assert meta["attribute_scale"] == {"arousal": [1, 5], "valence": [1, 5], "dominance": [1, 5]}
    for item in meta["meta_data"]:
        v, a, d = truth[Path(item["path"]).stem]["vad"]
        assert item["attributes"] == {"arousal": a, "valence": v, "dominance": d}
    layout = write_msp_podcast_layout(corpus, tmp_path / "msp")
    manifest = msp_podcast.prepare(layout, tmp_path / "msp_meta")
    fold = manifest.folds["fold1"]
    speakers = {
        split: {row["speaker"] for row in manifest.rows(getattr(fold, split))} for split in ("train", "dev", "test")
    }
    assert len(speakers["train"]) == 6 and len(speakers["dev"]) == len(speakers["test"]) == 2
    assert not (speakers["train"] & speakers["test"]) and not (speakers["dev"] & speakers["test"])
    for row in manifest.utterances:
        v, a, d = truth[row["id"]]["vad"]
        assert row["attributes"] == pytest.approx(
            {"arousal": 1 + 1.5 * (a - 1), "valence": 1 + 1.5 * (v - 1), "dominance": 1 + 1.5 * (d - 1)}, abs=1e-4
        )
        assert (row["label"] is None) == (truth[row["id"]]["code"] in ("xxx", "fru"))
    with pytest.raises(BuiltinCorpusError, match="not empty"):
        write_msp_podcast_layout(corpus, tmp_path / "msp")


@needs_tools
def test_a_corpus_of_the_previous_format_is_replaced(tmp_path, monkeypatch):
    """Version 1 wrote class-mean attributes: a corpus of the same parameters from it is
    regenerated (its audio is the same), not refused; other parameters still are."""
    import s3prl_ser.toy.builtin_corpus as builtin

    root = tmp_path / "corpus"
    root.mkdir()
    params = {"format_version": 1, "seed": 2, "utterances_per_speaker": 5}
    (root / "builtin_corpus.json").write_text(json.dumps({"generator": builtin.GENERATOR, "params": params}))

    def planned(seed, per_speaker):
        raise RuntimeError(f"regenerating seed {seed}")

    monkeypatch.setattr(builtin, "_plan", planned)
    with pytest.raises(RuntimeError, match="regenerating seed 2"):
        generate_corpus(root, seed=2, utterances_per_speaker=5)
    with pytest.raises(BuiltinCorpusError, match="overwrite"):
        generate_corpus(root, seed=3, utterances_per_speaker=5)
