# Plant files outside the workdir.
import sys

for path in ("/etc/bastion-pwned", "/tmp/bastion-pwned"):
    try:
        open(path, "w").write("pwned")
    except OSError as exc:
        print(path, exc, file=sys.stderr)
sys.exit(1)
