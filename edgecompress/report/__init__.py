"""The build report: JSON first (the CI gate reads it), rendered to markdown second."""
