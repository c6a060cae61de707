"""Local, private question answering over a folder of documents."""

import os

# llama.cpp and torch both use OpenMP. With the default busy-wait policy, two pools
# spinning on 2 cores starve each other (decode fell from ~11 to 0.4 tokens/s when an
# embedding ran beside it); passive waiting costs nothing measurable on a quiet machine.
# It must be set before either runtime loads, hence here, and only as a default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
