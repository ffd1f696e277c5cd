"""The HTTP server and its web page."""
