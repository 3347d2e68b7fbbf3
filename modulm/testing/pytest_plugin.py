"""pytest plugin of modulm.testing (being built)."""
