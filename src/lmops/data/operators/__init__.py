"""Built-in data operators; each module registers its operators on import."""
