"""Inference and shipping: predict emotions with a trained model, and ship it.

    from s3prl_ser.inference import EmotionRecognizer
    recognizer = EmotionRecognizer.from_pretrained("MODEL_DIR")  # or a run's fold directory / checkpoint
    recognizer.predict("speech.flac")                # any sample rate / channel count
    recognizer.predict_files(["DIR/", "list.txt"])   # rows: label, probabilities, duration, status
    recognizer.predict_long("meeting.wav")           # 8 s windows, 4 s hop, and a summary

Modules, each importing only those listed before it (no circle):

* :mod:`~s3prl_ser.inference.audio_input` -- which files: files, folders, list files (reading is
  :mod:`s3prl_ser.data.audio`'s, the reader of preparation and training too);
* :mod:`~s3prl_ser.inference.rows` -- result rows, CSV / JSON lines;
* :mod:`~s3prl_ser.inference.long_audio` -- long files in windows, and a summary;
* :mod:`~s3prl_ser.inference.speech_segments` -- long files cut at speech (silero-vad), silences between;
* :mod:`~s3prl_ser.inference.files` -- many files in batches, errors as rows, as they are done;
* :mod:`~s3prl_ser.inference.long_audio_plot` -- a long file's rows as a picture (probabilities over time);
* :mod:`~s3prl_ser.inference.model_dir` -- the self-contained model directory (write, verify, read);
* :mod:`~s3prl_ser.inference.upstream_spec` -- how a model directory describes and rebuilds its upstreams offline;
* :mod:`~s3prl_ser.inference.recognizer` -- :class:`EmotionRecognizer`;
* :mod:`~s3prl_ser.inference.model_card` -- the model directory's ``README.md``;
* :mod:`~s3prl_ser.inference.onnx` -- ONNX export of a recognizer;
* :mod:`~s3prl_ser.inference.export` -- a trained run -> a model directory (``python -m s3prl_ser.export``);
* :mod:`~s3prl_ser.inference.publish` -- upload a model directory to the Hugging Face Hub.

Command line: ``python -m s3prl_ser.inference MODEL AUDIO|DIR|LIST...`` (:mod:`s3prl_ser.cli.inference`).
"""

from s3prl_ser.inference.recognizer import EmotionRecognizer, Prediction, RecognizerMember, resolve_checkpoint

__all__ = ["EmotionRecognizer", "Prediction", "RecognizerMember", "resolve_checkpoint"]
