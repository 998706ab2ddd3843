"""The front end: a model (a module, a model file or a .pt2) captured as the wsc IR."""
