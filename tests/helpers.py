"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

import subprocess
import sys
from pathlib import Path

import torch

TINY_ECAPA = (
    "config.downstream_expert.modelrc.ecapa.channels=[16, 16, 16, 16, 48],,"
    "config.downstream_expert.modelrc.ecapa.res2net_scale=4,,"
    "config.downstream_expert.modelrc.ecapa.attention_channels=8,,"
    "config.downstream_expert.modelrc.ecapa.se_channels=8,,"
    "config.downstream_expert.modelrc.ecapa.lin_neurons=16"
)


def overrides(root, meta, steps=12, every=4, k=2, extra=""):
    """``-o`` overrides for a short emotion_ecapa run with a tiny ECAPA-TDNN (``root``/``meta``
    None: left out, for a command that names its own corpus)."""
    return ",,".join(
        filter(
            None,
            [
                f"config.downstream_expert.datarc.root={root}" if root is not None else "",
                f"config.downstream_expert.datarc.meta_data={meta}" if meta is not None else "",
                f"config.runner.total_steps={steps}",
                f"config.runner.eval_step={every}",
                f"config.runner.save_step={every}",
                f"config.runner.log_step={every}",
                "config.runner.gradient_accumulate_steps=1",
                "config.downstream_expert.datarc.num_workers=0",
                f"config.downstream_expert.checkpoint_averaging.best_k={k}",
                TINY_ECAPA,
                extra,
            ],
        )
    )


def finetune_overrides(root, meta, steps=6, every=2, k=2, accumulate=1, warmup=1, freeze=0, extra=""):
    """``-o`` overrides for a short ``python -m upstream_ft`` run on a tiny upstream (``root``/``meta``
    None: left out)."""
    return ",,".join(
        filter(
            None,
            [
                f"config.datarc.root={root}" if root is not None else "",
                f"config.datarc.meta_data={meta}" if meta is not None else "",
                f"config.runner.total_steps={steps}",
                f"config.runner.eval_step={every}",
                f"config.runner.save_step={every}",
                f"config.runner.log_step={every}",
                f"config.runner.gradient_accumulate_steps={accumulate}",
                f"config.scheduler.warmup_steps={warmup}",
                f"config.upstream.freeze_transformer_steps={freeze}",
                "config.optimizer.upstream_lr=1.0e-3",
                "config.datarc.num_workers=0",
                "config.datarc.train_batch_size=4",
                f"config.checkpoint_averaging.best_k={k}",
                extra,
            ],
        )
    )


def train_args(expdir, opts=None, *, upstream="fbank", ckpt=None, task="emotion_ecapa", extra=()):
    """run_downstream argv: ``-m train -u UPSTREAM [-k CKPT] -d TASK [-p EXPDIR] --device cpu *EXTRA [-o OPTS]``.

    ``expdir=None`` leaves out ``-p`` and ``opts=None`` leaves out ``-o``; ``-o`` always comes last.
    """
    argv = ["-m", "train", "-u", upstream]
    if ckpt is not None:
        argv += ["-k", str(ckpt)]
    argv += ["-d", task]
    if expdir is not None:
        argv += ["-p", str(expdir)]
    argv += ["--device", "cpu", *extra]
    if opts is not None:
        argv += ["-o", opts]
    return argv


def finetune_args(upstream, ckpt, fold, ft_dir, opts):
    """``python -m upstream_ft`` argv: ``-u UPSTREAM [-k CKPT] --folds FOLD [-p FT_DIR] --device cpu -o OPTS``
    (``ckpt=None`` leaves out ``-k``, ``ft_dir=None`` leaves out ``-p``)."""
    argv = ["-u", upstream] + (["-k", str(ckpt)] if ckpt is not None else []) + ["--folds", fold]
    argv += ["-p", str(ft_dir)] if ft_dir is not None else []
    return argv + ["--device", "cpu", "-o", opts]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def torchrun(*args, **subprocess_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` of torchrun with 2 processes on this machine: ``TORCHRUN + [*args]``."""
    return subprocess.run([*TORCHRUN, *args], **subprocess_kwargs)


def pad_with_noise(x: torch.Tensor, lengths: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """Overwrite padded frames (along ``time_dim``) with large random values, so any leak shows up."""
    x = x.clone()
    for b, length in enumerate(lengths.tolist()):
        padding = x[b].narrow(time_dim - 1, length, x.shape[time_dim] - length)
        padding.copy_(1e4 * torch.randn_like(padding))
    return x


def randomize_batchnorm(module: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN shifts padding."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 2.0)
            bn.bias.data.normal_()


def die_after_saving(monkeypatch, step: int) -> None:
    """Make upstream_ft's trainer stop like a killed process right after writing step ``step``'s states."""
    from s3prl_ser.finetuning.trainer import FoldTrainer

    save = FoldTrainer._save_states

    def save_then_die(self, progress):
        save(self, progress)
        if progress.step == step:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(FoldTrainer, "_save_states", save_then_die)


def run_request(argv):
    """The :class:`~s3prl_ser.experiments.launch.RunRequest` of a run_downstream command line ``argv``."""
    from s3prl_ser.cli.run_downstream import build_parser
    from s3prl_ser.experiments.launch import RunRequest

    return RunRequest.from_arguments(build_parser().parse_args(argv))


def tiny_fbank_model(corpus, meta, root, fold):
    """Train fbank + tiny ECAPA-TDNN on ``fold`` for 4 steps into ``root/fold``; export it to ``root/model``."""
    from s3prl_ser.cli.run_downstream import main as run_downstream
    from s3prl_ser.inference.export import export_run

    run_downstream(train_args(root / fold, overrides(corpus, meta, steps=4, every=2), extra=("-v", fold)))
    return export_run(root / fold, root / "model")


ATTRIBUTES = ("arousal", "valence", "dominance")


def rated_meta(corpus, out):
    """The mini corpus's meta data in ``out`` with attributes that vary (its EmoEvaluation rates every
    turn 2.5): arousal from the clip's RMS level, valence by class, dominance unknown (null) for each
    dialog's first turn and their mean otherwise; scale 1-5."""
    import json
    import warnings

    import numpy as np
    import soundfile

    from s3prl_ser.data.corpora.iemocap import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus's utterance without audio, on purpose
        prepare(corpus, out)
    valence = {"neu": 3.0, "hap": 4.5, "ang": 1.5, "sad": 2.0}
    for path in Path(out).glob("Session*/*_meta_data.json"):
        data = json.loads(path.read_text())
        for item in data["meta_data"]:
            wav, _ = soundfile.read(Path(corpus) / item["path"])
            arousal = round(1 + 4 * min(float(np.sqrt(np.mean(wav**2))) / 0.2, 1.0), 3)
            item["attributes"] = {
                "arousal": arousal,
                "valence": valence[item["label"]],
                "dominance": None if item["path"].endswith("000.wav") else (arousal + valence[item["label"]]) / 2,
            }
        path.write_text(json.dumps(data))
    return out


def tiny_attribute_model(corpus, meta, root, fold, *, categories=True, out="model"):
    """:func:`tiny_fbank_model` trained on :data:`ATTRIBUTES` too (``categories=False``: on them only),
    into ``root/fold``; exported to ``root/out``."""
    from s3prl_ser.cli.run_downstream import main as run_downstream
    from s3prl_ser.inference.export import export_run

    targets = f"config.downstream_expert.targets.attributes=[{', '.join(ATTRIBUTES)}]"
    if not categories:
        targets += ",,config.downstream_expert.targets.categories=false"
    opts = overrides(corpus, meta, steps=4, every=2, extra=targets)
    run_downstream(train_args(root / fold, opts, extra=("-v", fold)))
    return export_run(root / fold, root / out)
