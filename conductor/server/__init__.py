"""The conductor's server: the change pipeline and its outputs, the gateway, fan-out, workers, OSC ingress."""
