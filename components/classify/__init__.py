# Keras (and TensorFlow under it) is first imported here in every process that uses it: its
# native start-up lines go to the run's log file unless GRUFLOW_VERBOSE (components/verbosity.py).
from components.verbosity import import_quietly

import_quietly("keras")
