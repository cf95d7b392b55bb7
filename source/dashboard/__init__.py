"""A web dashboard over the queue: the runs, their progress and the videos that came out (`python -m source.cli
dashboard`). Read-only unless started with an admin token; videos are served only from the output folder."""
