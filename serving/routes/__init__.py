"""HTTP routes, one file per endpoint group."""
