"""Command-line tools beside the jobs: the capture benchmark (`bench`) and the summary of a
repair sweep (`summary`)."""
