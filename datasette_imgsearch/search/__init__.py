"""Search: the query language, argument checks, and the searcher that turns a query into ranked hits
with their strength: one code path for the CLI, the SQL functions, the page and the JSON."""
