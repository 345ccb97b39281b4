"""The browser code the conductor serves: pages, scripts and the npm libraries (package data)."""
