"""``python -m s3prl_ser.cli.inference MODEL AUDIO...``: one JSON line of emotion per audio file.

``MODEL`` is an experiment (fold) directory or its final checkpoint; see
:class:`s3prl_ser.inference.EmotionRecognizer`.
"""

from __future__ import annotations

import argparse
import json

import torch

from s3prl_ser.cli.errors import exit_on_error
from s3prl_ser.inference import EmotionRecognizer

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s3prl_ser.cli.inference", description="Predict the emotion of audio files."
    )
    parser.add_argument("model", help="experiment (fold) directory or final checkpoint")
    parser.add_argument("audio", nargs="+", help="audio files (any sample rate)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    with exit_on_error():  # no such model or audio file, unreadable audio
        recognizer = EmotionRecognizer.from_pretrained(args.model, device=args.device)
        for path in args.audio:
            prediction = recognizer.predict(path)
            print(
                json.dumps(
                    {
                        "file": path,
                        "label": prediction.label,
                        "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
                    }
                )
            )


if __name__ == "__main__":
    main()
