"""The strategy sweep behind benchmarks/mapping_strategies.py.

    cells.py    a cell (one compile) as a frozen dataclass, and the function that evaluates it into a row
    grid.py     the models, targets and modes the sweep knows, and the cells a command line asks for
    run.py      running cells in a process pool or on Ray, with cells.csv as the checkpoint
    outputs.py  the relative columns, table.md and the plots, from cells.csv
"""
