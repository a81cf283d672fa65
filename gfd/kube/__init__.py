"""How our programs talk to the Kubernetes API: `client` (building the client, the request budget, one
request function), `errors` (the typed failures), `watch` (the one watch loop)."""
