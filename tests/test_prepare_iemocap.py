import json
import shutil
from pathlib import Path

import pytest

from s3prl_ser.cli.prepare_iemocap import main
from s3prl_ser.data.corpora.iemocap import PreparationError, prepare

# Worked out by hand from tests/data/iemocap_mini (see tests/data/README.md).
EXPECTED = {
    "Session1": {"neu": 2, "hap": 2, "ang": 1, "sad": 2},
    "Session2": {"neu": 1, "hap": 2, "ang": 1, "sad": 1},
    "Session3": {"neu": 2, "hap": 0, "ang": 1, "sad": 1},
    "Session4": {"neu": 0, "hap": 2, "ang": 1, "sad": 1},
    "Session5": {"neu": 1, "hap": 1, "ang": 1, "sad": 1},
}


def _counts(meta):
    counts = {label: 0 for label in ("neu", "hap", "ang", "sad")}
    for item in meta["meta_data"]:
        counts[item["label"]] += 1
    return counts


@pytest.fixture(scope="module")
def prepared(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("meta")
    with pytest.warns(UserWarning, match="Ses02F_impro02_M000"):
        prepare(mini_corpus, out, attributes=None)  # s3prl's JSON exactly (attributes: test_attribute_labels.py)
    return out


def test_per_fold_per_class_counts(prepared):
    for session, expected in EXPECTED.items():
        test = json.loads((prepared / session / "test_meta_data.json").read_text())
        train = json.loads((prepared / session / "train_meta_data.json").read_text())
        assert test["labels"] == {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
        assert _counts(test) == expected
        others = [c for s, c in EXPECTED.items() if s != session]
        assert _counts(train) == {k: sum(c[k] for c in others) for k in expected}


def test_train_and_test_disjoint_and_cover_corpus(prepared):
    for session in EXPECTED:
        train = {m["path"] for m in json.loads((prepared / session / "train_meta_data.json").read_text())["meta_data"]}
        test = {m["path"] for m in json.loads((prepared / session / "test_meta_data.json").read_text())["meta_data"]}
        assert not train & test
        assert all(p.startswith(f"{session}/") for p in test)
        assert not any(p.startswith(f"{session}/") for p in train)
        assert len(train | test) == 24


def test_schema_matches_s3prl(prepared, mini_corpus):
    meta = json.loads((prepared / "Session1" / "test_meta_data.json").read_text())["meta_data"]
    first = meta[0]
    assert set(first) == {"path", "label", "speaker"}
    # sorted label files: Ses01F_impro01 first; speaker is the file-name prefix (dialog owner)
    assert first == {
        "path": "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav",
        "label": "neu",
        "speaker": "Ses01F",
    }
    assert {m["speaker"] for m in meta} == {"Ses01F", "Ses01M"}
    labels = {Path(m["path"]).stem: m["label"] for m in meta}
    assert labels["Ses01F_impro01_F001"] == "hap"  # exc merged into hap
    assert "Ses01F_impro01_M001" not in labels  # fru dropped
    assert "Ses01F_impro01_M003" not in labels  # audio without a label line
    for m in meta:
        assert (mini_corpus / m["path"]).is_file()


def test_transcripts_written(prepared):
    texts = json.loads((prepared / "transcripts.json").read_text())
    assert len(texts) == 24
    assert texts["Ses01F_impro01_F000"] == "Excuse me."
    assert texts["Ses01F_impro01_M000"] == "Do you have your forms?"


def test_missing_session_is_an_error(mini_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(mini_corpus, root)
    shutil.rmtree(root / "Session3")
    with pytest.raises(PreparationError, match="Session3"):
        prepare(root, tmp_path / "meta")
    assert not (tmp_path / "meta").exists()  # nothing half-written


def test_malformed_and_unknown_label_lines_name_the_file(mini_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(mini_corpus, root)
    label_file = root / "Session4" / "dialog" / "EmoEvaluation" / "Ses04M_impro04.txt"
    original = label_file.read_text()
    label_file.write_text(original + "[9.0000 - 9.5000]\n")
    with pytest.raises(PreparationError, match=r"Ses04M_impro04.txt:\d+: malformed"):
        prepare(root, tmp_path / "meta")
    label_file.write_text(original.replace("\tfea\t", "\tjoy\t"))
    with pytest.raises(PreparationError, match=r"Ses04M_impro04.txt:\d+: unknown emotion code 'joy'"):
        prepare(root, tmp_path / "meta")


def test_cli_prints_count_table(mini_corpus, tmp_path, capsys):
    with pytest.warns(UserWarning):
        main([str(mini_corpus), "--out", str(tmp_path / "meta")])
    out = capsys.readouterr().out
    assert "fold3  test         2      0      1      1       4" in out
    assert "all" in out and "24" in out
    assert (tmp_path / "meta" / "Session5" / "train_meta_data.json").is_file()


def test_cli_error_exits_with_message(tmp_path):
    with pytest.raises(SystemExit, match="IEMOCAP root directory not found"):
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "meta")])


def test_listdir_order_reproduces_stock_s3prl_preprocessing(mini_corpus, tmp_path):
    """The same meta data as s3prl's own ``IEMOCAP_preprocess.py`` (the leaderboard's split
    source: ``random_split`` depends on the train list's order)."""
    from s3prl.downstream.emotion import IEMOCAP_preprocess  # needs librosa (test extra)

    corpus = tmp_path / "IEMOCAP"
    shutil.copytree(mini_corpus, corpus)  # stock s3prl writes into the corpus directory
    IEMOCAP_preprocess.main(str(corpus))
    with pytest.warns(UserWarning):
        prepare(corpus, tmp_path / "ours", order="listdir", attributes=None)
    for session in EXPECTED:
        for split in ("train", "test"):
            stock = json.loads((corpus / "meta_data" / session / f"{split}_meta_data.json").read_text())
            ours = json.loads((tmp_path / "ours" / session / f"{split}_meta_data.json").read_text())
            assert ours.pop("file_order") == "listdir"  # an extra key stock s3prl ignores
            assert ours == stock, (session, split)
    # A stock run's own JSON, read as is, gives that run's split; its file order is unrecorded.
    from s3prl_ser.data.fold_data import load_fold_data

    datarc = {"root": str(corpus), "meta_data": str(corpus / "meta_data")}
    stock_fold = load_fold_data(datarc, "fold2", read_audio=False)
    ours_fold = load_fold_data({**datarc, "meta_data": str(tmp_path / "ours")}, "fold2", read_audio=False)
    assert stock_fold.protocol.split["file_order"] is None and ours_fold.protocol.split["file_order"] == "listdir"
    assert stock_fold.protocol.dev == ours_fold.protocol.dev  # the same dev utterances
