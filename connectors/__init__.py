"""Platform connectors: each knows one API's endpoints, pagination, payload shapes and write calls."""
