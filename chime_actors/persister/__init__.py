"""Inside a persister process: the channel sequencer and the batch writer."""
