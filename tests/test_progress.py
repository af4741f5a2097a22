"""Progress files written by workers are shown as fractional models by the main process."""

from zoo.progress import ProgressBar, Reporter


def test_running_populations_advance_the_bar_by_their_fraction(tmp_path):
    folder = tmp_path / "progress"
    bar = ProgressBar(folder, total=10, initial=2, desc="zoo t", enabled=False)
    training, measuring = Reporter(folder / "a.json", models=4), Reporter(folder / "b.json", models=2)
    training.report("train", 50, 100, force=True)  # half trained: 4 x 0.7 x 0.5 = 1.4 models
    measuring.report("measure", 0, 1, force=True)  # trained, measuring: 2 x 0.7 = 1.4 models
    bar._show(bar._running())
    assert abs(bar.bar.n - (2 + 1.4 + 1.4)) < 1e-9
    training.close()
    measuring.close()
    bar.finish(6)
    assert bar.bar.n == 8 and not list(folder.iterdir())


def test_reports_are_rate_limited(tmp_path):
    rep = Reporter(tmp_path / "p.json", models=1, every=60)
    rep.report("train", 1, 10)
    rep.report("train", 9, 10)  # within the interval: not written
    assert '"done": 1' in (tmp_path / "p.json").read_text()


def test_in_process_units_advance_the_bar_and_count_when_they_finish():
    bar = ProgressBar(None, total=6, desc="zoo study", enabled=False, weights={})
    with bar.track(4) as unit:
        unit.report("run", 1, 2)  # a stage the bar does not weigh counts the whole model: 4 x 0.5
        bar._show(bar._running())
        assert bar.bar.n == 2 and bar.bar.desc == "zoo study: run: "
    assert bar.finished == 4 and not bar._units
    try:
        with bar.track(2) as unit:
            unit.report("run", 1, 2)
            raise ValueError
    except ValueError:
        pass
    assert bar.finished == 4 and not bar._units  # a failed unit is not counted


def test_stage_weights_and_the_main_process_stage():
    bar = ProgressBar(None, total=10, desc="zoo t", enabled=False)
    assert bar.fraction("train", 1, 2) == 0.35 and bar.fraction("measure", 1, 2) == 0.85
    bar.stage("publish")
    assert bar.bar.desc == "zoo t: publish: "  # tqdm adds the ": "
    only_measure = ProgressBar(None, total=10, enabled=False, weights={"measure": 1.0})
    assert only_measure.fraction("measure", 1, 4) == 0.25


def test_module_level_track_reports_to_the_innermost_open_bar():
    from zoo import progress

    with progress.track(3) as unit:  # no bar open: nothing happens
        unit.report("run", 1, 3)
    progress.stage("load")
    with ProgressBar(None, total=5, enabled=False) as outer:
        with ProgressBar(None, total=3, enabled=False) as inner:
            assert progress.active() is inner
            with progress.track(3):
                pass
        assert progress.active() is outer and inner.finished == 3 and outer.finished == 0
        progress.stage("load")
        assert outer.bar.desc == "zoo: load: "
    assert progress.active() is None


def test_ctrl_c_erases_the_bar_and_scripts_end_with_one_line(capsys):
    import pytest

    from zoo.progress import interruptible

    def main():
        with ProgressBar(None, total=4, desc="zoo t") as bar:
            bar.finish(1)
            raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        interruptible(main, "example")
    err = capsys.readouterr().err
    assert e.value.code == 130
    bar, _, message = err.rpartition("\r")  # the bar drawn, then erased; the message on a clean line
    assert "1.0/4" in bar and message == "example: interrupted\n"
