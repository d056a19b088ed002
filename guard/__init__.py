"""Detection and response: profiles, detectors, rules, the one judge of what
a kernel fact means, verdicts, alerts and the audit log."""
