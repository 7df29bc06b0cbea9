"""Memory cells: small neural functions that regenerate an episode's exact bytes from its key."""
