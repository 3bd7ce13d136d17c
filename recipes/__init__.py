"""Example recipes shipped with milr (package data)."""
