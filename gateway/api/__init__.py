"""The management API: every route declared once as an `Operation` (`operations`), its
bodies (`models`), API keys (`auth`), one module per resource, and the OpenAPI document
generated from the same models (`openapi`)."""
