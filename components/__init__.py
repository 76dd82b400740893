# The one import-time action in components/: before anything imports TensorFlow, its native
# start-up lines are routed to the run's log file (unless GRUFLOW_VERBOSE). It installs an
# import finder only; TensorFlow is not loaded by this (components/verbosity.py).
from components.verbosity import quiet_tensorflow_import

quiet_tensorflow_import()
