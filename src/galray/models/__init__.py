"""Plain torch modules: no Ray, no files."""
