"""Run every kernel in this folder through the Triton interpreter (CPU, no GPU needed).

TRITON_INTERPRET must be set before triton is imported anywhere, hence at conftest
import time; generated sources go to a throwaway cache directory.
"""

import os
import tempfile

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("ARCHDSL_CACHE_DIR", tempfile.mkdtemp(prefix="archdsl-test-cache-"))
