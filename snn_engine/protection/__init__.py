"""What protects a run and keeps its books: run folders, the resume contract, checkpoint trust, config and argument checks, checkpoint files, summaries, moved class paths."""
