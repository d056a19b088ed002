# Exhaust the process table.
# The shell forks once, before any bomb exists, and then execs: a fork of
# its own refused later would end it (dash exits on a failed fork), and the
# run with it, before the limit was ever held against the bomb.
bomb() { bomb | bomb & }; bomb & exec sleep 5
