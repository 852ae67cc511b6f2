"""Reproductions of published tables: which runs make each row, and our numbers."""
