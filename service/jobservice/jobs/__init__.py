"""Job types: the `Job` base class, the registry and the built-ins."""
