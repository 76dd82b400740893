"""gruflow's stage logic: `python -m components.<stage>` is each DVC stage's command."""

import os as _os

# Ctrl-C in a terminal reaches the whole process group, so a stage command run by gruflow's
# flow (which sets GRUFLOW_STAGE_ERROR) gets it too, possibly while it is still importing
# TensorFlow. It then exits 130 at once and quietly; the flow stops what is left, sweeps the
# temp files, restores the outputs and prints the one line. os._exit, not an exception: one
# raised in a signal handler can land in a weakref callback or __del__ and be swallowed (seen:
# a tune trial went on). This is the first code a `python -m components.<stage>` process (and
# a spawned tune worker) runs, hence here and not in main().
if _os.environ.get("GRUFLOW_STAGE_ERROR"):
    import signal as _signal
    import sys as _sys

    def _stop(_signum, _frame):
        mp = _sys.modules.get("multiprocessing")
        for child in mp.active_children() if mp else []:  # tune's spawned trial workers
            child.terminate()
        _os._exit(130)

    _signal.signal(_signal.SIGINT, _stop)

# The one import-time action in components/: before anything imports TensorFlow, its native
# start-up lines are routed to the run's log file (unless GRUFLOW_VERBOSE). It installs an
# import finder only; TensorFlow is not loaded by this (components/verbosity.py).
from components.verbosity import quiet_tensorflow_import  # noqa: E402

quiet_tensorflow_import()
