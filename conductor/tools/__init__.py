"""The command line and its tools: check, serve, replay, emulate, status, deploy, synths."""
