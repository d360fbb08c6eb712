"""``python -m analysis.reproduce`` is ``python -m bench.reproduce`` (kept so the documented
commands work). The reproduction trains models, so its code lives in bench/reproduce; nothing
else under analysis/ imports JAX or the model code."""

import sys

from bench.reproduce.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m analysis.reproduce"))
