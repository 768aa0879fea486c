import pytest

from s3prl_ser.training.best_checkpoints import BestCheckpoints


def _save(best, step, score):
    names = best.offer(step, score)
    for name in names:  # what s3prl's runner does with the returned names
        (best.directory / name).write_bytes(b"ckpt")
    return names


def test_keeps_k_best_and_deletes_displaced(tmp_path):
    best = BestCheckpoints(tmp_path, k=2)
    assert _save(best, 100, 0.5) == ["dev-top-step100.ckpt"]
    assert _save(best, 200, 0.7) == ["dev-top-step200.ckpt"]
    assert _save(best, 300, 0.4) == []  # worse than both kept
    assert _save(best, 400, 0.6) == ["dev-top-step400.ckpt"]
    assert [(e.step, e.score) for e in best.entries()] == [(200, 0.7), (400, 0.6)]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["dev-top-step200.ckpt", "dev-top-step400.ckpt"]


def test_ties_keep_the_earlier_step(tmp_path):
    best = BestCheckpoints(tmp_path, k=1)
    _save(best, 1, 0.5)
    assert _save(best, 2, 0.5) == []
    assert [e.step for e in best.entries()] == [1]


def test_reevaluated_step_replaces_its_entry_after_resume(tmp_path):
    best = BestCheckpoints(tmp_path, k=2)
    _save(best, 10, 0.3)
    _save(best, 20, 0.9)  # later killed; resumed from step 10, step 20 re-evaluated
    resumed = BestCheckpoints(tmp_path, k=2)
    assert _save(resumed, 20, 0.2) == ["dev-top-step20.ckpt"]
    assert [(e.step, e.score) for e in resumed.entries()] == [(10, 0.3), (20, 0.2)]


def test_entries_skip_files_never_written(tmp_path):
    best = BestCheckpoints(tmp_path, k=3)
    _save(best, 1, 0.1)
    best.offer(2, 0.9)  # killed before the runner wrote the file
    assert [e.step for e in best.entries()] == [1]
    assert best.paths() == [tmp_path / "dev-top-step1.ckpt"]


def test_k_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="k must be >= 1"):
        BestCheckpoints(tmp_path, k=0)
