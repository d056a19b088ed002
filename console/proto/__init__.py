"""Generated gRPC stubs of bastion.proto (regenerate with `make proto`)."""
