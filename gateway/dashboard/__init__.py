"""The operator's dashboard in the browser: sign-in sessions, pages, and their static files."""
