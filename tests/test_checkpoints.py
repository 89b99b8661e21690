"""Which checkpoint --resume continues from: the last one whose save finished, never one cut short by a kill or a
full disk, and the unfinished ones after it are removed so that their steps are trained afresh."""

from posttrain.runs import RunFolder


def checkpoint(run, step: int, marker: str = "trainer_state.json", text: str = '{"global_step": 1}'):
    folder = run / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if marker:
        (folder / marker).write_text(text)
    return folder


def test_resume_continues_from_the_last_complete_checkpoint_and_removes_the_unfinished_ones_after_it(tmp_path):
    for step in (2, 10):
        checkpoint(tmp_path, step)
    checkpoint(tmp_path, 4, marker="state.pt", text="ppo")  # PPO's own checkpoints end with state.pt
    checkpoint(tmp_path, 12, marker="")  # killed before anything was written
    checkpoint(tmp_path, 14, text='{"global_st')  # killed while its marker was being written
    (tmp_path / "checkpoints" / "checkpoint-16.partial").mkdir()  # a PPO save that never reached its rename
    said = []
    latest = RunFolder(tmp_path).resume_from(echo=said.append)
    assert latest == tmp_path / "checkpoints" / "checkpoint-10"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint-10",
        "checkpoint-2",
        "checkpoint-4",
    ]
    assert said[-1] == f"resume: continuing after step 10 from {latest}"
    assert len(said) == 3  # one line per removed checkpoint, one for the one continued from


def test_a_run_folder_with_no_complete_checkpoint_resumes_from_nothing(tmp_path):
    checkpoint(tmp_path, 3, text="{")
    assert RunFolder(tmp_path).latest_checkpoint() is None
    assert RunFolder(tmp_path, markers=()).latest_checkpoint() == tmp_path / "checkpoints" / "checkpoint-3"
