"""Loading, validating, tokenizing and collating datasets in the standard schemas (DESIGN sec. 3)."""
