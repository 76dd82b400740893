"""components/lm/progress.py: Keras's bar on a terminal, plain lines at an interval otherwise
(tested with a fake clock: no timing in tests)."""

from __future__ import annotations

import io

import numpy as np

from components.lm import progress


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_interval_with_batch_loss_and_eta():
    out = io.StringIO()
    cb = progress.ProgressLines("train", interval=30.0, clock=FakeClock(10.0), stream=out)
    cb.set_params({"epochs": 2, "steps": 12})
    cb.on_train_begin()
    for epoch in range(2):
        cb.on_epoch_begin(epoch)
        for batch in range(12):
            cb.on_train_batch_end(batch, {"loss": 2.5})
    lines = out.getvalue().splitlines()
    # one clock tick of 10 s per call: a line every third batch call, not every batch
    assert 6 <= len(lines) <= 9, lines
    assert lines[0].startswith("train: epoch 1/2 batch ") and "loss 2.5000" in lines[0]
    assert all("/12" in line for line in lines)
    assert all("epoch ETA " in line for line in lines if " batch 1/" not in line)
    assert any(line.startswith("train: epoch 2/2") for line in lines)


def test_eta_is_the_rest_of_the_epoch_at_the_current_pace():
    out = io.StringIO()
    cb = progress.ProgressLines("tune trial", interval=0.5, clock=FakeClock(1.0), stream=out)
    cb.set_params({"epochs": 1, "steps": 101})
    cb.on_train_begin()  # t = 1
    cb.on_epoch_begin(0)
    cb.on_train_batch_end(0, {})  # t = 2: no pace yet (the first batch also compiles)
    cb.on_train_batch_end(1, {})  # t = 3: 1 s per batch since, 99 batches left
    assert out.getvalue().splitlines() == [
        "tune trial: epoch 1/1 batch 1/101",
        "tune trial: epoch 1/1 batch 2/101, epoch ETA 1:39",
    ]


def test_terminal_gets_the_keras_bar_and_logs_get_lines(monkeypatch):
    assert progress.fit_progress("train", True, stream=Tty()) == (1, [])
    verbose, callbacks = progress.fit_progress("train", True, stream=io.StringIO())
    assert verbose == 0 and [type(c) for c in callbacks] == [
        progress.ProgressLines,
        progress.EpochLines,
    ]
    assert callbacks[0].interval == progress.DEFAULT_INTERVAL
    monkeypatch.setenv(progress.INTERVAL_ENV, "5")
    assert progress.fit_progress("x", stream=io.StringIO())[1][0].interval == 5.0
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # 0: no lines
    assert progress.fit_progress("x", stream=io.StringIO()) == (0, [])


def test_lines_come_from_a_real_fit():
    import keras

    out = io.StringIO()
    cb = progress.ProgressLines("fit", interval=0.0, stream=out)  # every batch
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    x = np.zeros((8, 3), "float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("fit: epoch 1/2 batch 1/2, loss ") and len(lines) == 4


def test_clock_text():
    assert progress.clock_text(59.6) == "1:00"
    assert progress.clock_text(3725) == "1:02:05"


def test_one_line_per_epoch_from_a_real_fit():
    import keras

    out = io.StringIO()
    cb = progress.EpochLines("train", clock=FakeClock(2.0), stream=out)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    x = np.zeros((8, 3), "float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1] == "train: epoch 2/2 in 2 s: loss 0.0000", lines
