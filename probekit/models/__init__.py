"""Models: the toy transformer zoo, its training loop, and adapters that expose named sites."""
