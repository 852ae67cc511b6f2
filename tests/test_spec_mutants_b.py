"""Tests that kill mutmut survivors (issue 18; docs/mutation.md)."""
