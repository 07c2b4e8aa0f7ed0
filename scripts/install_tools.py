"""Install the operations tools the tests use (helm, promtool): filled in by the operate work."""
