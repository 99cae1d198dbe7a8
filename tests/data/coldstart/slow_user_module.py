"""A stand-in for an application module whose import takes a while (60 ms)."""

import time

time.sleep(0.06)
