"""The node agent: scsynth, JACK and JackTrip on a performer's or site's machine."""
