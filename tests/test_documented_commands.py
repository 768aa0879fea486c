"""Every command in the docs runs as written.

Each command line of README.md's (and docs/*.md's) fenced ```bash blocks needs a row in
``COMMANDS``: a command without one fails :func:`test_every_documented_command_has_a_row`, so a
new or edited command cannot go untested. A row says how the command is checked:

``s3prl-ser SUBCOMMAND ...`` runs as ``python -m s3prl_ser.cli.main SUBCOMMAND ...`` (the copy's
dispatcher: the installed console script would run this checkout's editable install).

* :class:`Run`: executed in a subprocess from a copy of the checkout (what ``git ls-files``
  lists, untracked files git does not ignore included; not ``result/`` or caches), in the
  rows' ``step`` order (later commands read what earlier ones wrote, e.g. an export reads the
  cross-validation). The docs' placeholders become the test's: ``/data/...`` a data directory
  holding the mini corpus as ``/data/IEMOCAP`` and a table corpus as ``/data/mycorpus``;
  relative outputs (``result/...``, ``models/...``) land in the copy. ``subs`` are the row's
  own stand-ins (a tiny random-init HuBERT for ``-u hubert``, ``...`` for what the docs elide),
  and ``shorten`` appends overrides to the command's ``-o`` (two steps, a tiny ECAPA-TDNN).
* :class:`Parse`: for what cannot run here (package installs, the whole suite, pretrained
  weights, the Hub): each ``python`` command of the line is parsed by its CLI's own parser
  (``PARSERS``; a ``torchrun`` line: torchrun's own parser, then the launched script's), so a
  renamed or removed flag fails; ``pip install -e .[EXTRA]`` must name an
  extra of pyproject.toml.

Adding a documented command: copy the line the failure prints into ``COMMANDS`` as the key and
give it a ``Run`` (with the ``step`` after the commands whose output it reads) or a ``Parse``
(saying why it cannot run; a ``python -m MODULE`` needs its parser in ``PARSERS``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import finetune_overrides, overrides

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _strip_comment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` starting a word outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def documented_commands(paths: list[Path] = DOCS) -> dict[str, str]:
    """Every command line of the fenced bash blocks of ``paths``: backslash continuations
    joined, comments dropped, runs of blanks made one; mapped to ``FILE:LINE`` where it starts.

    Example:
        >>> import tempfile
        >>> doc = Path(tempfile.mkdtemp()) / "x.md"
        >>> _ = doc.write_text("```bash\\n# note\\npython a.py -x \\\\\\n    -y 1  # why\\n```\\n```\\nout\\n```\\n")
        >>> documented_commands([doc])
        {'python a.py -x -y 1': 'x.md:3'}
    """
    commands: dict[str, str] = {}
    for path in paths:
        in_bash, pending, start = False, "", 0
        for number, line in enumerate(path.read_text().splitlines(), 1):
            fence = line.strip()
            if fence.startswith("```"):
                in_bash = not in_bash and fence in ("```bash", "```sh", "```shell")
                continue
            if not in_bash:
                continue
            start = start or number
            text = _strip_comment(line).rstrip()
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            command = " ".join((pending + text).split())
            if command:
                commands.setdefault(command, f"{path.name}:{start}")
            pending, start = "", 0
    return commands


@dataclass(frozen=True)
class Run:
    """Executed for real: ``subs`` (the row's stand-ins, ``{tiny_hubert}``-style fields filled
    in), then ``/data/`` -> the test's data directory; ``shorten`` (``"stage2"``, ``"stage1"``
    or ``None``) appends short-run overrides to ``-o``. ``clear`` is removed first (a command
    the docs give as an alternative writing the same place); every path in ``writes`` must exist
    afterwards (relative: in the checkout copy; ``/data/...``: in the data directory)."""

    step: int
    shorten: str | None = "stage2"
    subs: tuple[tuple[str, str], ...] = ()
    writes: tuple[str, ...] = ()
    clear: tuple[str, ...] = ()
    needs: tuple[tuple[str, str | None], ...] = ()  # (command, shorten): undocumented setup run first


@dataclass(frozen=True)
class Parse:
    """Not run here (``why``); its python commands are parsed after ``subs``."""

    why: str
    subs: tuple[tuple[str, str], ...] = ()


TINY_HUBERT = (("-u hubert ", "-u hubert_local -k {tiny_hubert} "),)
# The cross-validation's own overrides, which the deployment command elides as "...".
SAME_OVERRIDES = (
    '"config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"'
)

COMMANDS: dict[str, Run | Parse] = {
    # README "Install" and "Three ways to start"
    "apt-get install -y espeak-ng sox libsndfile1 && pip install -e . && s3prl-ser demo": Parse(
        "installs system and Python packages; the demo's main job trains 25 folds (about 40 min)"
    ),
    'apt-get install -y espeak-ng sox libsndfile1 ffmpeg && pip install -e ".[test]" && python -m pytest -q': Parse(
        "installs packages, then runs this very suite"
    ),
    # docs/iemocap.md (the first two also in README "Three ways to start")
    "s3prl-ser prepare-iemocap /data/IEMOCAP --out /data/iemocap_meta": Run(
        1, shorten=None, writes=("/data/iemocap_meta/Session5/test_meta_data.json",)
    ),
    # docs/iemocap.md: the same training, named with -n
    'python run_downstream.py -m train -u hubert -d emotion_ecapa -n my_exp -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"': Run(
        2, subs=TINY_HUBERT, writes=("result/downstream/my_exp/dev-avg.ckpt", "result/downstream/my_exp/final.json")
    ),
    'python run_downstream.py -m train -u hubert -d emotion_ecapa -p result/hubert_ecapa/fold1 -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta,,config.downstream_expert.datarc.test_fold=fold1"': Run(
        3, subs=TINY_HUBERT, writes=("result/hubert_ecapa/fold1/test_fold1_metrics.json",)
    ),
    's3prl-ser cv -u hubert -d emotion_ecapa -p result/hubert_ecapa -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"': Run(
        4, subs=TINY_HUBERT, writes=("result/hubert_ecapa/results.json", "result/hubert_ecapa/fold5/final.json")
    ),
    # docs/inference.md
    "s3prl-ser export result/hubert_ecapa --fold fold1 -o models/hubert_fold1": Run(
        5, shorten=None, writes=("models/hubert_fold1/model.safetensors",)
    ),
    "s3prl-ser export result/hubert_ecapa --ensemble -o models/hubert_5folds": Run(
        5, shorten=None, writes=("models/hubert_5folds/model.safetensors",)
    ),
    "s3prl-ser export result/hubert_ecapa/fold1 -o models/hubert_fold1 --onnx --overwrite": Run(
        6, shorten=None, writes=("models/hubert_fold1/model.onnx",)
    ),
    "s3prl-ser export ... --push-to-hub USER/NAME [--private]": Parse(
        "uploads to the Hugging Face Hub (network, token)",
        subs=(("... ", "result/hubert_ecapa --fold fold1 -o models/hubert_fold1 "), ("[--private]", "--private")),
    ),
    's3prl-ser cv -p result/hubert_ecapa -u hubert -d emotion_ecapa -o "..." --deploy --export models/hubert_deploy': Run(
        7,
        subs=(*TINY_HUBERT, ('"..."', SAME_OVERRIDES)),
        writes=("result/hubert_ecapa/deploy/final.json", "models/hubert_deploy/model.safetensors"),
    ),
    "s3prl-ser export result/hubert_ecapa --deploy -o models/hubert_deploy": Run(
        8,  # the other way to the directory cross_validate --export wrote
        shorten=None,
        clear=("models/hubert_deploy",),
        writes=("models/hubert_deploy/model.safetensors",),
    ),
    "s3prl-ser infer models/hubert_fold1 speech.wav calls/ list.txt --output results.csv --batch-size 8": Run(
        8, shorten=None, writes=("results.csv",)
    ),
    "s3prl-ser infer models/hubert_fold1 speech.wav calls/ list.txt --output results.csv --resume": Run(
        9,
        shorten=None,
        writes=("results.csv",),  # the rows of the command above, all finished: kept
    ),
    "s3prl-ser infer models/hubert_fold1 meeting.flac --plot meeting.png": Parse(
        "needs a recording longer than --long-audio; tests/test_inference_streaming.py plots one"
    ),
    "s3prl-ser infer models/hubert_fold1 meeting.flac --segments vad --output meeting.csv": Parse(
        "needs a long recording; tests/test_speech_segments.py runs --segments vad on real recorded speech"
    ),
    # docs/cross-corpus.md (fold5's model never trained on Session 5, which MyCorpus's test set copies)
    "s3prl-ser score result/hubert_ecapa --fold fold5 --root /data/mycorpus --meta-data /data/mycorpus_meta --split test -o result/scores/fold5_on_mycorpus": Run(
        5, shorten=None, writes=("result/scores/fold5_on_mycorpus/score.json",)
    ),
    "s3prl-ser score models/hubert_deploy --root /data/CREMA-D --meta-data /data/cremad_meta --label-map maps.yaml -o result/scores/deploy_on_cremad": Parse(
        "needs CREMA-D; tests/test_cross_corpus.py scores an export on a corpus with CREMA-D's labels"
    ),
    "s3prl-ser score models/iemocap_attributes --root /data/MSP-Podcast --meta-data /data/msp_meta --split test -o result/scores/iemocap_on_msp": Parse(
        "needs MSP-Podcast; tests/test_cross_corpus_attributes.py scores attribute models on a 1-7 corpus by hand"
    ),
    "s3prl-ser cross-corpus -p result/cross_corpus --corpus iemocap=/data/IEMOCAP,/data/iemocap_meta --corpus cremad=/data/CREMA-D,/data/cremad_meta -u hubert -d emotion_ecapa": Parse(
        "needs CREMA-D; tests/test_cross_corpus.py runs the matrix on two small corpora, killed once and resumed"
    ),
    # docs/corpora.md
    "s3prl-ser prepare table /data/mycorpus /data/mycorpus_meta --table /data/mycorpus/list.csv --columns path=file,label=emotion,speaker=actor --split-column set --name MyCorpus": Run(
        1, shorten=None, writes=("/data/mycorpus_meta/manifest.json",)
    ),
    's3prl-ser cv -u hubert -d emotion_ecapa -p result/mycorpus -o "config.downstream_expert.datarc.root=/data/mycorpus,,config.downstream_expert.datarc.meta_data=/data/mycorpus_meta"': Run(
        2, subs=TINY_HUBERT, writes=("result/mycorpus/results.json",)
    ),
    # docs/dimensional.md (the mini corpus rates every turn [2.5, 2.5, 2.5]: the run and its report, not a score)
    's3prl-ser cv -u hubert -d emotion_ecapa -c downstream/emotion_ecapa/attributes.yaml -p result/iemocap_attributes -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"': Run(
        2,
        # the mini corpus's folds train on fewer than attributes.yaml's batch of 32
        subs=(
            *TINY_HUBERT,
            (
                'meta_data=/data/iemocap_meta"',
                'meta_data=/data/iemocap_meta,,config.downstream_expert.datarc.train_batch_size=4"',
            ),
        ),
        writes=("result/iemocap_attributes/results.json", "result/iemocap_attributes/scatter_valence.png"),
    ),
    's3prl-ser cv -u hubert -d emotion_ecapa -c downstream/emotion_ecapa/multitask.yaml -p result/iemocap_multitask -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"': Parse(
        "five more folds; tests/test_dimensional_training.py cross-validates multi-task end to end"
    ),
    "s3prl-ser prepare msp_podcast /data/MSP-Podcast /data/msp_podcast_meta --test-set Test1": Parse(
        "needs MSP-Podcast; tests of the preparer read its release layout"
    ),
    's3prl-ser cv -u wavlm_large -d emotion_ecapa -c downstream/emotion_ecapa/msp_podcast_attributes.yaml -p result/msp_podcast_attributes -o "config.downstream_expert.datarc.root=/data/MSP-Podcast,,config.downstream_expert.datarc.meta_data=/data/msp_podcast_meta"': Parse(
        "needs MSP-Podcast and WavLM Large's weights; tests/test_dimensional_training.py runs attribute-only training"
    ),
    's3prl-ser cv -u wavlm_large -d emotion_ecapa -c downstream/emotion_ecapa/msp_podcast_categories.yaml -p result/msp_podcast_categories -o "config.downstream_expert.datarc.root=/data/MSP-Podcast,,config.downstream_expert.datarc.meta_data=/data/msp_podcast_meta"': Parse(
        "needs MSP-Podcast and WavLM Large's weights; tests/test_dimensional_training.py checks the -c files"
    ),
    # docs/dimensional.md: the built-in corpus as an MSP-Podcast release (figures in the doc)
    "s3prl-ser builtin-corpus /data/builtin --msp-podcast-layout /data/builtin_msp": Parse(
        "generates the 280-utterance corpus; the built-in corpus's tests write and prepare its MSP-Podcast layout"
    ),
    "s3prl-ser prepare msp_podcast /data/builtin_msp /data/builtin_msp_meta --test-set Test1": Parse(
        "reads the layout above; the built-in corpus's tests prepare it"
    ),
    's3prl-ser cv -u fbank -d emotion_ecapa -c downstream/emotion_ecapa/config_builtin.yaml -p result/builtin_msp_attributes -o "config.downstream_expert.datarc.root=/data/builtin_msp,,config.downstream_expert.datarc.meta_data=/data/builtin_msp_meta,,config.downstream_expert.targets={categories: false, attributes: [arousal, valence, dominance]}"': Parse(
        "300 steps on the layout above (about 2.5 min); tests/test_dimensional_training.py runs attribute-only training"
    ),
    "s3prl-ser prepare-iemocap /data/builtin --out /data/builtin_meta": Parse(
        "reads the corpus the builtin-corpus row generates; the IEMOCAP rows above run prepare-iemocap"
    ),
    's3prl-ser cv -u fbank -d emotion_ecapa -c downstream/emotion_ecapa/config_builtin.yaml -p result/builtin_attributes --workers 2 -o "config.downstream_expert.datarc.root=/data/builtin,,config.downstream_expert.datarc.meta_data=/data/builtin_meta,,config.downstream_expert.targets={categories: false, attributes: [arousal, valence, dominance]}"': Parse(
        "five folds of 300 steps (about 12 min); the IEMOCAP attributes row above runs the same cross-validation"
    ),
    # docs/two-stages.md
    'python -m upstream_ft -u hubert -p result/upstream_ft/hubert -o "config.datarc.root=/data/IEMOCAP,,config.datarc.meta_data=/data/iemocap_meta"': Run(
        2, shorten="stage1", subs=TINY_HUBERT, writes=("result/upstream_ft/hubert/fold5/upstream.ckpt",)
    ),
    's3prl-ser cv -u hubert_ft_avg -k result/upstream_ft/hubert -d emotion_ecapa -c downstream/emotion_ecapa/paper/exp6.yaml -n paper_exp6 -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"': Run(
        3, writes=("result/downstream/paper_exp6/results.json",)
    ),
    # docs/table1.md
    's3prl-ser cv -u hubert_ft_avg,wav2vec2_ft_avg -k result/upstream_ft/hubert,result/upstream_ft/wav2vec2 -d emotion_ecapa -c downstream/emotion_ecapa/paper/exp7.yaml -n paper_exp7 -o "config.downstream_expert.datarc.root=...,,config.downstream_expert.datarc.meta_data=..."': Run(
        3,
        subs=(("root=...", "root=/data/IEMOCAP"), ("meta_data=...", "meta_data=/data/iemocap_meta")),
        needs=(  # stage 1 of wav2vec 2.0, which the README states only in words
            (
                "python -m upstream_ft -u wav2vec2_local -k {tiny_wav2vec2} -p result/upstream_ft/wav2vec2 "
                '-o "config.datarc.root=/data/IEMOCAP,,config.datarc.meta_data=/data/iemocap_meta"',
                "stage1",
            ),
        ),
        writes=("result/downstream/paper_exp7/results.json",),
    ),
    "s3prl-ser table1 --experiments 1-11 -p result/table1 --root /data/IEMOCAP --meta /data/iemocap_meta --bert /models/bert-base-uncased --superb fbank,wav2vec2,hubert": Parse(
        "the paper's Large upstreams and BERT Base (downloads); tests/test_table1.py runs experiments on tiny ones"
    ),
    "s3prl-ser table1 --experiments 1-11 --targets attributes -p result/table1_attributes --root /data/IEMOCAP --meta /data/iemocap_meta --bert /models/bert-base-uncased": Parse(
        "the paper's Large upstreams and BERT Base (downloads); tests/test_table1.py runs an attribute table on tiny ones"
    ),
    # docs/scaling-out.md: a Slurm array task (fold 2 here), which the cross-validation above reuses
    'python run_downstream.py -m train -a -u hubert -d emotion_ecapa -p result/hubert_ecapa/fold${SLURM_ARRAY_TASK_ID} -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta,,config.downstream_expert.datarc.test_fold=fold${SLURM_ARRAY_TASK_ID}"': Run(
        3,
        subs=(*TINY_HUBERT, ("${SLURM_ARRAY_TASK_ID}", "2")),
        writes=("result/hubert_ecapa/fold2/test_fold2_metrics.json",),
    ),
    # docs/scaling-out.md: the report of the folds above (every one finished by now), training nothing
    's3prl-ser cv --report-only -u hubert -d emotion_ecapa -p result/hubert_ecapa -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"': Run(
        5, subs=TINY_HUBERT, writes=("result/hubert_ecapa/results.md", "result/hubert_ecapa/confusion.png")
    ),
    'torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint node1:29500 run_downstream.py -m train -u hubert -d emotion_ecapa -p result/hubert_ecapa/fold1 -o "config.downstream_expert.datarc.root=/data/IEMOCAP,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta,,config.downstream_expert.datarc.test_fold=fold1"': Parse(
        "two nodes of four GPUs (torchrun's rendezvous)"
    ),
    'torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint node1:29500 -m upstream_ft -u hubert -p result/upstream_ft/hubert --folds fold1 -o "config.datarc.root=/data/IEMOCAP,,config.datarc.meta_data=/data/iemocap_meta"': Parse(
        "two nodes of four GPUs (torchrun's rendezvous)"
    ),
}


def _dispatched(argv: list[str]) -> list[str]:
    """``argv`` with a leading ``s3prl-ser`` as the dispatcher module it installs.

    Example:
        >>> _dispatched(["s3prl-ser", "cv", "-p", "x"]), _dispatched(["python", "run_downstream.py"])
        (['python', '-m', 's3prl_ser.cli.main', 'cv', '-p', 'x'], ['python', 'run_downstream.py'])
    """
    return ["python", "-m", "s3prl_ser.cli.main", *argv[1:]] if argv[:1] == ["s3prl-ser"] else argv


def _parse_dispatched(argv: list[str]) -> object:
    """``s3prl-ser SUBCOMMAND ARGS``: the dispatcher's own parser (``--help`` and unknown
    subcommands), then ``ARGS`` by the subcommand's module's parser."""
    from s3prl_ser.cli.main import SUBCOMMANDS
    from s3prl_ser.cli.main import build_parser as dispatcher

    dispatcher().parse_args(argv[:1])
    assert argv[0] in SUBCOMMANDS, f"s3prl-ser has no subcommand {argv[0]!r}"
    module = f"s3prl_ser.cli.{SUBCOMMANDS[argv[0]][0]}"
    assert module in PARSERS, f"add {module}'s parser to PARSERS"
    return PARSERS[module](argv[1:])


def _parse_table1(argv: list[str]) -> None:
    from s3prl_ser.cli.table1 import build_parser
    from s3prl_ser.experiments.table1 import parse_experiments

    parse_experiments(build_parser().parse_args(argv).experiments)


def _parse_cross_corpus(argv: list[str]) -> None:
    """The matrix's own options, then the rest by run_downstream.py's parser (as its ``main`` does)."""
    from s3prl_ser.cli.cross_corpus import build_parser
    from s3prl_ser.cli.run_downstream import build_parser as run_parser

    run_parser().parse_args(["-m", "train", *build_parser().parse_known_args(argv)[1]])


def _parse_cross_validate(argv: list[str]) -> None:
    """The cross-validation's own options, then the rest by run_downstream.py's parser (as its ``main`` does)."""
    from s3prl_ser.cli.cross_validate import build_parser
    from s3prl_ser.cli.run_downstream import build_parser as run_parser

    run_parser().parse_args(["-m", "train", *build_parser().parse_known_args(argv)[1]])


def _parser(module: str) -> Callable[[list[str]], object]:
    """``module.build_parser().parse_args``, imported when called."""

    def parse(argv: list[str]) -> object:
        return importlib.import_module(module).build_parser().parse_args(argv)

    return parse


PARSERS: dict[str, Callable[[list[str]], object]] = {
    "run_downstream.py": _parser("s3prl_ser.cli.run_downstream"),
    "s3prl_ser.cli.demo": _parser("s3prl_ser.cli.demo"),
    "s3prl_ser.cli.table1": _parse_table1,
    "s3prl_ser.cli.export": _parser("s3prl_ser.cli.export"),
    "s3prl_ser.cli.inference": _parser("s3prl_ser.cli.inference"),
    "upstream_ft": _parser("s3prl_ser.cli.finetune"),
    "s3prl_ser.cli.main": _parse_dispatched,
    "s3prl_ser.cli.score": _parser("s3prl_ser.cli.score"),
    "s3prl_ser.cli.cross_corpus": _parse_cross_corpus,
    "s3prl_ser.cli.cross_validate": _parse_cross_validate,
    "s3prl_ser.cli.prepare_corpus": _parser("s3prl_ser.cli.prepare_corpus"),
    "s3prl_ser.cli.builtin_corpus": _parser("s3prl_ser.cli.builtin_corpus"),
    "s3prl_ser.cli.prepare_iemocap": _parser("s3prl_ser.cli.prepare_iemocap"),
}


def _substitute(command: str, subs: tuple[tuple[str, str], ...], fields: dict[str, str]) -> str:
    """``command`` with the row's ``subs`` (``{field}``s filled in from ``fields``), then the
    docs' ``/data/`` and ``/models/`` in the test's data directory."""
    for old, new in subs:
        assert old in command, f"stand-in {old!r} is not in {command!r}"
        command = command.replace(old, new.format(**fields))
    start = r"(?<![\w./-])"  # a path's start, not "/data/" inside another path
    command = re.sub(start + "/data/", lambda _: f"{fields['data']}/", command)
    return re.sub(start + "/models/", lambda _: f"{fields['data']}/models/", command)


def _shortened(argv: list[str], shorten: str | None) -> list[str]:
    """``argv`` with the short-run overrides appended to its ``-o`` (added if it has none)."""
    if shorten is None:
        return argv
    short = (
        overrides(None, None, steps=2, every=1, k=1)
        if shorten == "stage2"
        else finetune_overrides(None, None, steps=2, every=1, k=1)
    )
    if "-o" not in argv:
        return [*argv, "-o", short]
    at = argv.index("-o") + 1
    return [*argv[:at], f"{argv[at]},,{short}", *argv[at + 1 :]]


def _write_inputs(checkout: Path, data: Path, corpus: Path, meta: Path) -> None:
    """The files the docs' commands name: ``/data/IEMOCAP``, ``/data/mycorpus`` (a CSV table
    over the mini corpus's audio, Sessions 1-3 train, 4 dev, 5 test), and the inference inputs
    ``speech.wav``, ``calls/`` and ``list.txt`` in the checkout."""
    shutil.copytree(corpus, data / "IEMOCAP")
    rows = ["file,emotion,actor,set"]
    for session in range(1, 6):
        for item in json.loads((meta / f"Session{session}" / "test_meta_data.json").read_text())["meta_data"]:
            split = "train" if session <= 3 else ("dev" if session == 4 else "test")
            name = Path(item["path"]).name
            target = data / "mycorpus" / "audio" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(corpus / item["path"], target)
            rows.append(f"audio/{name},{item['label']},{name[:6]},{split}")
    (data / "mycorpus" / "list.csv").write_text("\n".join(rows) + "\n")
    wavs = sorted((corpus / "Session1").rglob("*.wav"))
    shutil.copy(wavs[0], checkout / "speech.wav")
    (checkout / "calls").mkdir()
    for wav in wavs[1:3]:
        shutil.copy(wav, checkout / "calls" / wav.name)
    (checkout / "list.txt").write_text(f"{wavs[3]}\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mini_corpus, mini_meta, tiny_upstreams) -> dict[str, Path]:
    """A copy of the checkout (the files git tracks or would track: not ignored outputs such as
    ``result/``), a data directory, and the tiny HuBERT standing in for pretrained weights."""
    root = tmp_path_factory.mktemp("documented")
    checkout, data = root / "checkout", root / "data"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted in the working tree is not part of it
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    data.mkdir()
    _write_inputs(checkout, data, mini_corpus, mini_meta)
    return {
        "checkout": checkout,
        "data": data,
        "tiny_hubert": tiny_upstreams["hubert"],
        "tiny_wav2vec2": tiny_upstreams["wav2vec2"],
    }


def _execute(command: str, shorten: str | None, workspace: dict[str, Path]) -> subprocess.CompletedProcess:
    """``command`` (its stand-ins substituted) run from the checkout copy, shortened."""
    argv = _shortened(_dispatched(shlex.split(command)), shorten)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the copy's own packages, not this checkout's
    argv = [sys.executable if word == "python" else word for word in argv]
    return subprocess.run(argv, cwd=workspace["checkout"], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def executed(workspace) -> dict[str, subprocess.CompletedProcess]:
    """Every :class:`Run` row, in step order (the docs' order within a step): the row's
    command's process, or the first of its ``needs`` that failed."""
    fields = {key: str(value) for key, value in workspace.items()}
    order = {command: i for i, command in enumerate(documented_commands())}
    runs = sorted(
        ((c, row) for c, row in COMMANDS.items() if isinstance(row, Run) and c in order),
        key=lambda item: (item[1].step, order[item[0]]),
    )
    done = {}
    for command, row in runs:
        for path in row.clear:
            shutil.rmtree(workspace["checkout"] / path, ignore_errors=True)
        for need, shorten in row.needs:
            done[command] = _execute(_substitute(need.format(**fields), (), fields), shorten, workspace)
            if done[command].returncode:
                break
        else:
            done[command] = _execute(_substitute(command, row.subs, fields), row.shorten, workspace)
    return done


def test_every_documented_command_has_a_row():
    documented = documented_commands()
    missing = [f"{where}: {command}" for command, where in documented.items() if command not in COMMANDS]
    stale = [command for command in COMMANDS if command not in documented]
    assert not missing, "documented commands without a row in COMMANDS:\n" + "\n".join(missing)
    assert not stale, "rows for commands the docs no longer give:\n" + "\n".join(stale)


RUN_ROWS = [command for command, row in COMMANDS.items() if isinstance(row, Run)]
PARSE_ROWS = [command for command, row in COMMANDS.items() if isinstance(row, Parse)]


def _row_id(command: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.,-]+", "_", command.removeprefix("python "))[:70]


@pytest.mark.parametrize("command", RUN_ROWS, ids=_row_id)
def test_documented_command_runs(command, executed, workspace):
    row = COMMANDS[command]
    done = executed[command]
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for path in row.writes:
        where = Path(_substitute(path, (), {"data": str(workspace["data"])}))
        assert (workspace["checkout"] / where).exists(), f"{command} did not write {path}"  # absolute: as is


def _extras() -> set[str]:
    """The optional-dependency groups pyproject.toml defines (tomllib is Python >= 3.11 only)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*=", section, re.MULTILINE))


@pytest.mark.parametrize("command", PARSE_ROWS, ids=_row_id)
def test_documented_command_parses(command, tmp_path):
    row = COMMANDS[command]
    line = _substitute(command, row.subs, {"data": str(tmp_path)})
    for part in line.split(" && "):
        program, *argv = _dispatched(shlex.split(part))
        if program == "torchrun":  # its own options, then the launched script's command line
            from torch.distributed.run import get_args_parser

            launch = get_args_parser().parse_args(argv)
            program, argv = (
                "python",
                [*(["-m"] if launch.module else []), launch.training_script, *launch.training_script_args],
            )
        if program in ("apt-get", "sudo"):
            continue  # system packages: .ci/run installs them
        if program == "pip":
            target = argv[-1]
            assert target == "." or re.fullmatch(r"\.\[[\w,-]+\]", target), f"pip installs {target!r}"
            assert set(target[2:-1].split(",") if target != "." else []) <= _extras(), f"unknown extra in {target}"
            continue
        assert program == "python", f"{command}: no check for {program!r}"
        if argv[:2] == ["-m", "pytest"]:
            continue  # the suite itself
        module, argv = (argv[1], argv[2:]) if argv[0] == "-m" else (argv[0], argv[1:])
        assert module in PARSERS, f"{command}: add {module}'s parser to PARSERS"
        PARSERS[module](argv)
        with pytest.raises(SystemExit):  # the check is not vacuous: a flag the CLI lacks fails it
            PARSERS[module]([*argv, "--renamed-flag"])
