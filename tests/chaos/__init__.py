"""The chaos suite: a three-node NATS cluster, processes and servers stopped under load."""
