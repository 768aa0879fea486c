"""Every corpus preparer on a tiny fixture in the corpus's real release layout and naming:
counts and folds against hand-written expectations, then one short fold through cross_validate."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from helpers import finetune_args, finetune_overrides, overrides
from s3prl_ser.cli.cross_validate import main as cross_validate_main
from s3prl_ser.cli.prepare_corpus import main as prepare_main
from s3prl_ser.data.corpora import cremad, emodb, esd, msp_podcast, ravdess
from s3prl_ser.data.corpora.common import PreparationError
from s3prl_ser.data.folds import GENDER_RULE
from s3prl_ser.data.manifest import read_manifest
from s3prl_ser.data.protocol import PROTOCOL_KEY
from s3prl_ser.fileio import safe_torch_load

pytestmark = pytest.mark.usefixtures("one_thread")


def write_audio(path: Path, seconds: float = 0.3, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    """Noise in the file format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = 0.1 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels)).astype(np.float32)
    soundfile.write(str(path), data if channels > 1 else data[:, 0], rate)
    return path


def counts(manifest, ids):
    found = {}
    for row in manifest.rows(ids):
        found[row["label"]] = found.get(row["label"], 0) + 1
    return found


def train_one_fold(
    root: Path, meta: Path, expdir: Path, folds: str | None = "fold1", upstream: tuple[str, ...] = ("-u", "fbank")
) -> dict:
    """A short emotion_ecapa cross-validation (fbank, mean pooling, 2 steps); its results.json."""
    argv = ["-p", str(expdir)] + (["--folds", folds] if folds else [])
    argv += [*upstream, "-d", "emotion_ecapa", "--device", "cpu"]
    extra = "config.downstream_expert.modelrc.aggregator=mean,,config.downstream_expert.datarc.pre_load=false"
    cross_validate_main(argv + ["-o", overrides(root, meta, steps=2, every=2, k=1, extra=extra)])
    return json.loads((expdir / "results.json").read_text())


# RAVDESS: Actor_NN/MM-VV-EE-II-SS-RR-AA.wav at 48 kHz; 6 actors x (neutral, happy, angry) + one song file.
def make_ravdess(root: Path) -> Path:
    for actor in range(1, 7):
        for emotion in ("01", "03", "05"):
            name = f"03-01-{emotion}-01-01-01-{actor:02d}.wav"
            write_audio(root / f"Actor_{actor:02d}" / name, rate=48000, seed=actor)
    write_audio(root / "Actor_01" / "03-02-03-01-01-01-01.wav", rate=48000)  # song: left out
    return root


def test_ravdess(tmp_path):
    root, meta = make_ravdess(tmp_path / "RAVDESS"), tmp_path / "meta"
    manifest = ravdess.prepare(root, meta)
    assert manifest.corpus == "RAVDESS" and manifest.labels == ["neu", "hap", "ang"]
    assert len(manifest.utterances) == 18  # the song file is not there
    assert list(manifest.folds) == [f"fold{k}" for k in range(1, 7)]
    # 6 actors in 6 folds, dealt by gender: the even (female) actors, then the odd (male) ones
    for k, actor in enumerate(["02", "04", "06", "01", "03", "05"], start=1):
        fold = manifest.folds[f"fold{k}"]
        assert {row["speaker"] for row in manifest.rows(fold.test)} == {actor}
        assert counts(manifest, fold.test) == {"neu": 1, "hap": 1, "ang": 1}
        assert counts(manifest, fold.train) == {"neu": 5, "hap": 5, "ang": 5} and fold.dev is None
    assert manifest.rows(["03-01-05-01-01-01-02"])[0] == {
        "id": "03-01-05-01-01-01-02",
        "path": "Actor_02/03-01-05-01-01-01-02.wav",
        "label": "ang",
        "speaker": "02",
        "gender": "female",
        "duration": 0.3,
    }
    results = train_one_fold(root, meta, tmp_path / "exp")
    assert results["corpus"] == {"name": "RAVDESS", "num_folds": 6, "official_test": None}
    assert results["folds"]["fold1"]["num_utterances"] == 3
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "RAVDESS: 1 of 6 fold(s); one fold run, so its std is undefined (n/a)." in md
    assert results["ua"]["std"] is None and "± n/a" in md and "± 0.00" not in md
    checkpoint = safe_torch_load(tmp_path / "exp" / "fold1" / "dev-avg.ckpt")
    assert checkpoint[PROTOCOL_KEY]["corpus_name"] == "RAVDESS" and "FoldProtocol" not in checkpoint  # one key
    assert checkpoint[PROTOCOL_KEY]["class_names"] == checkpoint["ClassNames"] == ["neu", "hap", "ang"]


def test_ravdess_names_the_bad_file(tmp_path):
    root = make_ravdess(tmp_path / "RAVDESS")
    write_audio(root / "Actor_03" / "03-01-09-01-01-01-03.wav")
    with pytest.raises(PreparationError, match=r"Actor_03/03-01-09-01-01-01-03.wav: unknown emotion code 09"):
        ravdess.prepare(root, tmp_path / "meta")
    (root / "Actor_03" / "03-01-09-01-01-01-03.wav").unlink()
    (root / "Actor_04" / "03-01-01-01-01-01-04.wav").write_bytes(b"RIFF not audio")
    with pytest.raises(
        PreparationError, match=r"1 of 18 audio files cannot be used: .*Actor_04/03-01-01-01-01-01-04.wav"
    ):
        ravdess.prepare(root, tmp_path / "meta")
    with pytest.warns(UserWarning, match="03-01-01-01-01-01-04.wav"):
        assert len(ravdess.prepare(root, tmp_path / "meta", skip_bad_audio=True).utterances) == 17


def test_speaker_folds_balance_gender(tmp_path, capsys):
    """Sorted ids dealt round-robin made every RAVDESS test fold one gender (odd actors are male)
    and 4 of 5 EmoDB folds; dealt by gender, each fold tests 2 + 2 actors and 1 + 1 speakers."""
    for actor in range(1, 25):
        write_audio(tmp_path / "RAVDESS" / f"Actor_{actor:02d}" / f"03-01-01-01-01-01-{actor:02d}.wav", seconds=0.05)
    for speaker in emodb.GENDERS:
        write_audio(tmp_path / "emodb" / "wav" / f"{speaker}a01Fa.wav", seconds=0.05)
    for corpus, folds, per_gender in (("ravdess", 6, 2), ("emodb", 5, 1)):
        prepare_main([corpus, str(tmp_path / corpus.replace("ravdess", "RAVDESS")), str(tmp_path / f"{corpus}_meta")])
        table = capsys.readouterr().out
        manifest = read_manifest(tmp_path / f"{corpus}_meta")
        assert GENDER_RULE in manifest.protocol and GENDER_RULE in table
        for k in range(1, folds + 1):
            fold = manifest.folds[f"fold{k}"]
            tested = {(row["speaker"], row["gender"]) for row in manifest.rows(fold.test)}
            assert sorted(g for _, g in tested) == ["female"] * per_gender + ["male"] * per_gender, (corpus, k)
            assert not {s for s, _ in tested} & {row["speaker"] for row in manifest.rows(fold.train)}
            assert f"fold{k}   female {per_gender}, male {per_gender}" in table


# CREMA-D: AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, 5 actors x 2 clips.
def make_cremad(root: Path) -> Path:
    for actor in range(1001, 1006):
        write_audio(root / "AudioWAV" / f"{actor}_DFA_ANG_XX.wav", seed=actor)
        write_audio(root / "AudioWAV" / f"{actor}_IEO_SAD_HI.wav", seed=actor + 10)
    return root


def test_cremad(tmp_path, capsys):
    root, meta = make_cremad(tmp_path / "CREMA-D"), tmp_path / "meta"
    prepare_main(["cremad", str(root), str(meta)])
    table = capsys.readouterr().out
    assert "CREMA-D: 5 speaker-independent folds" in table and "fold3   test" in table
    manifest = read_manifest(meta)
    assert manifest.labels == ["sad", "ang"]
    for k, actor in enumerate(range(1001, 1006), start=1):
        fold = manifest.folds[f"fold{k}"]
        assert list(fold.test) == [f"{actor}_DFA_ANG_XX", f"{actor}_IEO_SAD_HI"]
        assert counts(manifest, fold.train) == {"ang": 4, "sad": 4}
    results = train_one_fold(root, meta, tmp_path / "exp", folds="fold2")
    assert results["folds"]["fold2"]["num_utterances"] == 2 and results["corpus"]["name"] == "CREMA-D"
    with pytest.raises(PreparationError, match="1001_DFA_XYZ_XX.wav: unknown emotion code XYZ"):
        write_audio(root / "AudioWAV" / "1001_DFA_XYZ_XX.wav")
        cremad.prepare(root, tmp_path / "meta2")


def test_cremad_deals_by_the_release_demographics(tmp_path):
    root = make_cremad(tmp_path / "CREMA-D")
    sexes = {1001: "Male", 1002: "Female", 1003: "Male", 1004: "Male", 1005: "Female"}
    rows = [f"{actor},30,{sex},Caucasian,Not Hispanic" for actor, sex in sexes.items()]
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n" + "\n".join(rows) + "\n")
    manifest = cremad.prepare(root, tmp_path / "meta", num_folds=2)
    # female 1002, 1005, then male 1001, 1003, 1004, dealt round-robin (by id alone: 1001, 1003, 1005 | 1002, 1004)
    assert [{r["speaker"] for r in manifest.rows(f.test)} for f in manifest.folds.values()] == [
        {"1002", "1001", "1004"},
        {"1005", "1003"},
    ]
    assert manifest.rows(["1002_DFA_ANG_XX"])[0]["gender"] == "female"
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex\n1001,30,Male\n1002,41\n")
    with pytest.raises(PreparationError, match=r"VideoDemographics.csv:3: a short row"):
        cremad.prepare(root, tmp_path / "meta2")


# EmoDB: wav/<speaker><text><emotion letter><version>.wav, 6 speakers x 2 clips.
def make_emodb(root: Path) -> Path:
    for speaker in ("03", "08", "09", "10", "11", "12"):
        write_audio(root / "wav" / f"{speaker}a01Fa.wav", seed=int(speaker))
        write_audio(root / "wav" / f"{speaker}b02Wb.wav", seed=int(speaker) + 50)
    return root


def test_emodb(tmp_path):
    root, meta = make_emodb(tmp_path / "emodb"), tmp_path / "meta"
    manifest = emodb.prepare(root, meta)
    assert manifest.labels == ["hap", "ang"]
    # dealt by gender into 5 folds: female 08, 09, then male 03, 10, 11, 12 (12 joins 08 in fold1)
    expected = {"fold1": {"08", "12"}, "fold2": {"09"}, "fold3": {"03"}, "fold4": {"10"}, "fold5": {"11"}}
    for name, speakers in expected.items():
        fold = manifest.folds[name]
        assert {row["speaker"] for row in manifest.rows(fold.test)} == speakers
        assert not speakers & {row["speaker"] for row in manifest.rows(fold.train)}
    assert counts(manifest, manifest.folds["fold1"].test) == {"hap": 2, "ang": 2}
    results = train_one_fold(root, meta, tmp_path / "exp")
    assert results["folds"]["fold1"]["num_utterances"] == 4
    with pytest.raises(PreparationError, match=r"wav/03a01Xa.wav: unknown emotion letter X"):
        write_audio(root / "wav" / "03a01Xa.wav")
        emodb.prepare(root, tmp_path / "meta2")


def test_emodb_both_stages_and_inference(tmp_path, tiny_upstreams):
    """Stage 1 fine-tunes on EmoDB's fold2, stage 2 trains on that fold's export (fold guard
    passed), and the recognizer reads the result: one data path for all three."""
    from s3prl_ser.inference import EmotionRecognizer
    from upstream_ft.__main__ import main as upstream_ft

    root, meta, ft_dir = make_emodb(tmp_path / "emodb"), tmp_path / "meta", tmp_path / "ft"
    emodb.prepare(root, meta)
    upstream_ft(
        finetune_args(
            "hubert_local", tiny_upstreams["hubert"], "fold2", ft_dir, finetune_overrides(root, meta, 2, 2, 1)
        )
    )
    record = json.loads((ft_dir / "fold2" / "upstream.json").read_text())["protocol"]
    assert record["corpus_name"] == "EmoDB" and record["class_names"] == ["hap", "ang"] and record["num_folds"] == 5
    results = train_one_fold(root, meta, tmp_path / "exp", "fold2", ("-u", "hubert_ft_avg", "-k", str(ft_dir)))
    assert results["folds"]["fold2"]["num_utterances"] == 2  # speaker 09's two clips
    recognizer = EmotionRecognizer.from_pretrained(tmp_path / "exp" / "fold2")
    assert recognizer.predict(root / "wav" / "08a01Fa.wav").label in ("hap", "ang")


# ESD: <spk>/<Emotion>/{train,evaluation,test}/<spk>_<n>.wav and <spk>/<spk>.txt; one Mandarin and one
# English speaker, one clip per emotion and list, numbered as the release numbers them.
ESD_BLOCKS = {"Neutral": 0, "Angry": 350, "Happy": 700, "Sad": 1050, "Surprise": 1400}


def make_esd(root: Path) -> Path:
    for speaker in ("0001", "0011"):
        lines = []
        for emotion, block in ESD_BLOCKS.items():
            for folder, offset in (("evaluation", 1), ("test", 21), ("train", 51)):
                name = f"{speaker}_{block + offset:06d}"
                write_audio(root / speaker / emotion / folder / f"{name}.wav", seed=block + offset)
                lines.append(f"{name}\tsentence {block + offset}\t{emotion}")
        (root / speaker / f"{speaker}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_esd(tmp_path):
    root, meta = make_esd(tmp_path / "ESD"), tmp_path / "meta"
    manifest = esd.prepare(root, meta)
    assert manifest.official_test == "test" and list(manifest.folds) == ["fold1"]
    fold = manifest.folds["fold1"]
    five = {"neu": 2, "hap": 2, "sad": 2, "ang": 2, "sur": 2}
    assert counts(manifest, fold.train) == counts(manifest, fold.dev) == counts(manifest, fold.test) == five
    assert "0011_000351" in fold.dev and "0011_000371" in fold.test and "0001_001451" in fold.train
    assert manifest.rows(["0011_000351"])[0]["transcript"] == "sentence 351"
    assert json.loads((meta / "transcripts.json").read_text())["0001_000001"] == "sentence 1"
    assert len(esd.prepare(root, tmp_path / "en", language="en").utterances) == 15
    results = train_one_fold(root, meta, tmp_path / "exp", folds=None)  # the corpus's one fold by default
    assert list(results["folds"]) == ["fold1"] and results["folds"]["fold1"]["num_utterances"] == 10
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "official test set test" in md and "fold1 (official test test)" in md
    assert "mean ± std" not in md and "± " not in md  # one official test set: no std over folds
    log = (tmp_path / "exp" / "fold1" / "log.log").read_text()
    assert "dev at step 2" in log


# MSP-Podcast: Labels/labels_consensus.csv + Audios/<FileName>.
MSP_ROWS = [
    # FileName, EmoClass, SpkrID, Split_Set
    ("MSP-PODCAST_0001_0001.wav", "N", "10", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "H", "10", "Train"),
    ("MSP-PODCAST_0002_0001.wav", "A", "11", "Train"),
    ("MSP-PODCAST_0002_0002.wav", "S", "11", "Train"),
    ("MSP-PODCAST_0003_0001.wav", "N", "Unknown", "Train"),
    ("MSP-PODCAST_0003_0002.wav", "X", "12", "Train"),  # no agreement: left out
    ("MSP-PODCAST_0004_0001.wav", "H", "13", "Development"),
    ("MSP-PODCAST_0004_0002.wav", "O", "13", "Development"),  # other: left out
    ("MSP-PODCAST_0004_0003.wav", "A", "13", "Development"),
    ("MSP-PODCAST_0005_0001.wav", "N", "14", "Test1"),
    ("MSP-PODCAST_0005_0002.wav", "S", "14", "Test1"),
    ("MSP-PODCAST_0005_0003.wav", "A", "15", "Test1"),
    ("MSP-PODCAST_0006_0001.wav", "H", "16", "Test2"),
]


def make_msp(root: Path) -> Path:
    lines = ["FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"]
    for index, (name, code, speaker, split) in enumerate(MSP_ROWS):
        lines.append(f"{name},{code},3.4,4.2,3.0,{speaker},Female,{split}")
        write_audio(root / "Audios" / name, seed=index)
    (root / "Labels").mkdir(parents=True)
    (root / "Labels" / "labels_consensus.csv").write_text("\n".join(lines) + "\n")
    return root


def test_msp_podcast(tmp_path):
    root, meta = make_msp(tmp_path / "MSP-Podcast"), tmp_path / "meta"
    # categories only (attributes: test_attribute_labels.py)
    manifest = msp_podcast.prepare(root, meta, attributes=False)
    fold = manifest.folds["fold1"]
    assert manifest.official_test == "Test1" and manifest.labels == ["neu", "hap", "sad", "ang"]
    assert counts(manifest, fold.train) == {"neu": 2, "hap": 1, "ang": 1, "sad": 1}
    assert list(fold.dev) == ["MSP-PODCAST_0004_0001", "MSP-PODCAST_0004_0003"]
    assert list(fold.test) == ["MSP-PODCAST_0005_0001", "MSP-PODCAST_0005_0002", "MSP-PODCAST_0005_0003"]
    assert manifest.rows(["MSP-PODCAST_0003_0001"])[0]["speaker"] is None  # "Unknown"
    assert list(msp_podcast.prepare(root, tmp_path / "t2", test_set="Test2").folds["fold1"].test) == [
        "MSP-PODCAST_0006_0001"
    ]
    with pytest.raises(PreparationError, match="no Split_Set 'Test3'"):
        msp_podcast.prepare(root, tmp_path / "t3", test_set="Test3")
    results = train_one_fold(root, meta, tmp_path / "exp")
    assert results["corpus"] == {"name": "MSP-Podcast", "num_folds": 1, "official_test": "Test1"}
    assert results["folds"]["fold1"]["num_utterances"] == 3
    labels = root / "Labels" / "labels_consensus.csv"
    good = labels.read_text()
    labels.write_text(good + "MSP-PODCAST_0007_0001.wav,N\n")  # a row cut short: line 15
    with pytest.raises(SystemExit, match=r"^error: .*labels_consensus.csv:15: a short row, without SpkrID, Split_Set$"):
        prepare_main(["msp_podcast", str(root), str(tmp_path / "t5")])
    labels.write_text(good)
    (root / "Audios" / "MSP-PODCAST_0005_0003.wav").unlink()
    with pytest.raises(
        PreparationError, match=r"labels_consensus.csv:13: audio file .*MSP-PODCAST_0005_0003.wav not found"
    ):
        msp_podcast.prepare(root, tmp_path / "t4")


def test_iemocap_through_prepare_corpus(mini_corpus, mini_meta, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_main(["iemocap", str(mini_corpus), str(tmp_path / "meta")])
    assert "fold1  test         2      2      1      2       7" in capsys.readouterr().out
    for session in range(1, 6):  # byte for byte what prepare_iemocap writes
        for split in ("train", "test"):
            name = f"Session{session}/{split}_meta_data.json"
            assert (tmp_path / "meta" / name).read_bytes() == (mini_meta / name).read_bytes()
    results = train_one_fold(mini_corpus, tmp_path / "meta", tmp_path / "exp", folds="fold3")
    assert results["corpus"] == {"name": "IEMOCAP", "num_folds": 5, "official_test": None}
    assert results["folds"]["fold3"]["num_utterances"] == 4  # Session3: neu 2, ang 1, sad 1
