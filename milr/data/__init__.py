"""Data shipped with milr: prompt sets copied with attribution (see each SOURCE.md)."""
