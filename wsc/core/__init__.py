"""The core: the IR, the program, mesh geometry, errors and the pass manager. It imports nothing else of wsc
(but the target loader, wsc.targets, which is core too), so every other layer may build on it."""
