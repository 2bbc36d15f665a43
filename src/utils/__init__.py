"""Small helpers shared by every stage (atomic files, logging, seeds)."""
