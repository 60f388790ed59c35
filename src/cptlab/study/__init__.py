"""Studies: a YAML grid of runs (train/eval/diagnostic steps), run resumably, results in one SQLite database."""
