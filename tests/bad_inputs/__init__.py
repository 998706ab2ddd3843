"""The bad-input corpus (cases.py), its runner and the generator of docs/errors.md."""
