"""Progress of long fits: Keras's live bar (with ETA) on a terminal, a plain line every
`GRUFLOW_PROGRESS_SECONDS` (30) otherwise — logs and CI get a heartbeat, not a bar redrawn in
place.

Usage: `verbose, callbacks = fit_progress("train", verbose_off_tty=2)`, then
`model.fit(..., verbose=verbose, callbacks=[..., *callbacks])`. Console only: nothing here
changes what a stage writes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

import keras

INTERVAL_ENV = "GRUFLOW_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def interval_seconds() -> float:
    try:
        return max(float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL


def clock_text(seconds: float) -> str:
    """h:mm:ss or m:ss."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressLines(keras.callbacks.Callback):
    """One plain line per `interval` seconds of fitting: epoch, batch, loss, the epoch's ETA."""

    def __init__(
        self,
        label: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.label, self.interval, self.clock, self.stream = label, interval, clock, stream
        self.epoch, self.first_done, self.last = 0, 0.0, 0.0

    def on_train_begin(self, logs=None):
        self.last = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        if batch == 0:
            # the pace is measured from here: the first batch also traces and compiles
            self.first_done = now
        if now - self.last < self.interval:
            return
        self.last = now
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        done = batch + 1
        where = f"batch {done}/{steps}" if steps else f"batch {done}"
        eta = ""
        if steps and done > 1:
            left = (now - self.first_done) / (done - 1) * (steps - done)
            eta = f", epoch ETA {clock_text(left)}"
        loss = (logs or {}).get("loss")
        loss_text = f", loss {float(loss):.4f}" if loss is not None else ""
        print(
            f"{self.label}: epoch {self.epoch + 1}/{epochs} {where}{loss_text}{eta}",
            file=self.stream or sys.stdout,
            flush=True,
        )


class EpochLines(keras.callbacks.Callback):
    """One plain line per finished epoch (instead of Keras's two, `Epoch N/M` and its log):
    seconds, then every logged value, e.g. `train: epoch 1/4 in 154 s: loss 5.2239, val_loss
    4.5675, ...`."""

    def __init__(
        self, label: str, clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None
    ) -> None:
        super().__init__()
        self.label, self.clock, self.stream, self.start = label, clock, stream, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        values = ", ".join(f"{k} {_number(v)}" for k, v in (logs or {}).items())
        seconds = self.clock() - self.start
        print(
            f"{self.label}: epoch {epoch + 1}/{self.params.get('epochs')} in {seconds:.0f} s"
            + (f": {values}" if values else ""),
            file=self.stream or sys.stdout,
            flush=True,
        )


def _number(value) -> str:
    v = float(value)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"


def fit_progress(
    label: str, epoch_lines: bool = False, stream: TextIO | None = None
) -> tuple[int, list[keras.callbacks.Callback]]:
    """(fit's `verbose`, extra callbacks): the live bar on a terminal, else periodic lines (and,
    with `epoch_lines`, one line per finished epoch)."""
    stream = stream or sys.stdout
    if stream.isatty():
        return 1, []
    interval = interval_seconds()
    callbacks: list[keras.callbacks.Callback] = (
        [ProgressLines(label, interval, stream=stream)] if interval else []
    )
    return 0, callbacks + ([EpochLines(label, stream=stream)] if epoch_lines else [])
