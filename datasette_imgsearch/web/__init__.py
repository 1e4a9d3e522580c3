"""The web door: the search page and its JSON, picture routes, cells in Datasette's own pages, the
status endpoint, and the checks every request passes (permissions, CSRF, uploads)."""
