"""SynthDef sources and their compiled .scsyndef files (package data)."""
