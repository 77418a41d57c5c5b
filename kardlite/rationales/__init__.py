"""Teacher rationales as data: the append-only store, import and filtering."""
