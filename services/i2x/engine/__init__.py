"""The method as stages over a run in a Store: what the services and the in-process pipeline call."""
