"""Data stage: documents, operators, recipes and executors."""
