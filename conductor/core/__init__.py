"""What the conductor, the node agents and the tools share: the clock, the score, the
performance's state and its core, the journal, the scheduler and the protocol. Nothing here does network I/O."""
