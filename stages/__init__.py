"""Thin DVC stage entry points: ``python -m stages.<name>``.

Each module has a plain function the tests call and a ``main()`` that parses paths.
"""

import os

# Must happen before torch is imported: with OpenMP's default busy-waiting, the two vCPUs
# this project is developed and tested on ran CRNN training 2-3x slower (shared/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
