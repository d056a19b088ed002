# Outlive the supervisor: clear the parent-death signal, double-fork, and keep
# running detached, as a backdoor would.
import ctypes
import os
import time

PR_SET_PDEATHSIG = 1
ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
        while True:
            time.sleep(0.1)
    os._exit(0)
print("DETACHED", flush=True)
while True:
    time.sleep(0.1)
