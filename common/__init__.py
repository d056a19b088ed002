"""What every package shares and nothing of Bastion's own is imported into:
reading untrusted files, loading them into typed models, and the one
vocabulary of verdicts and severities."""
