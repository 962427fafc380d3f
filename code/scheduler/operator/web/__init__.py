"""The dashboard's HTML rendering, its static files, and the OpenAPI document."""
