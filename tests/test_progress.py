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
