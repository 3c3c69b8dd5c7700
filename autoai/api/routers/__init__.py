"""The control plane's routers, one per resource."""
